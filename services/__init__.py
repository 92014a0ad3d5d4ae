"""pet's gRPC services: the site and coordinator servers, their security and wire
conversions. Servicers only convert messages and delegate to the `pet` library."""
