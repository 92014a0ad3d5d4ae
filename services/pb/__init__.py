"""Generated from protocols/pet/v1 by `python -m services.codegen`; do not edit."""
