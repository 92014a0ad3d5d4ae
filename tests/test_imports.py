"""Imports run one way, and the command line starts without the heavy libraries: checked
in fresh interpreters, where `sys.modules` shows everything an import pulled in."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("numpy", "scipy", "pandas", "pyarrow", "opendp", "grpc", "torch", "tenseal",
         "sklearn", "duckdb", "sqlglot")
LIBRARY = ("pet", "pet.schema", "pet.queries", "pet.backends", "pet.synth", "pet.evaluate",
           "pet.study", "pet.site", "pet.sources", "pet.omop", "pet.workloads")
ABOVE = ("grpc", "services", "benchmarks")


def loaded_after(*modules: str, then: str = "") -> set[str]:
    """The top-level packages a fresh interpreter holds after importing `modules` and
    running `then`."""
    code = (f"import sys\nfor m in {list(modules)!r}: __import__(m)\n{then}\n"
            "import json; print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
    return set(json.loads(found.stdout))


def test_the_command_line_imports_no_heavy_library_to_build_its_parser() -> None:
    """`pet --help` and every parser of `pet`'s commands load none of numpy, scipy,
    OpenDP, gRPC, torch and the rest: each command imports what it uses when it runs."""
    parsed = loaded_after("pet.cli", then="from pet.cli import _parser; _parser()")
    assert parsed & set(HEAVY) == set()


def test_the_library_imports_neither_grpc_nor_services_nor_benchmarks() -> None:
    """pet's library (schema, queries, backends, synthesizers, evaluation, sources) sits
    below the services, the benchmarks and gRPC, which use it."""
    assert loaded_after(*LIBRARY) & set(ABOVE) == set()


def test_the_package_exports_its_names_when_first_used() -> None:
    """`from pet import Study` still works, importing what it needs then."""
    assert "numpy" not in loaded_after("pet")
    assert {"numpy", "scipy"} <= loaded_after("pet.study")
    import pet

    assert pet.Study.__module__ == "pet.study" and "Mean" in dir(pet)


def test_asking_the_coordinator_loads_no_engine_nor_statistics_package() -> None:
    """What `pet query` imports (reading a query, the client, the report) leaves out the
    data engines, statsmodels, scipy.stats, torch, pandas, Arrow, TenSEAL and the MPC
    parties: they cost the command line over a second, and only a site's data, a test's
    p-value, a table of the answer or another backend needs them."""
    code = ("from pet.queries import parse; from pet.client import Client; "
            "from pet.report import RESULT_HEADERS; parse('Mean(\"age\", where=\"age > 1\")')")
    found = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                            "print(json.dumps(sorted(sys.modules)))"],
                           capture_output=True, text=True, check=True)
    modules = set(json.loads(found.stdout))
    assert {"duckdb", "psycopg", "pyspark", "sqlglot", "statsmodels", "scipy.stats",
            "scipy.integrate", "torch", "crypten", "pandas", "pyarrow", "tenseal",
            "cryptography", "pet.mpc.parties", "pet.backends.he"} & modules == set()


def test_the_backends_are_found_by_name_and_imported_when_asked_for() -> None:
    """The registry's names are the classes' own, and a plaintext backend brings neither
    TenSEAL nor the MPC parties."""
    from pet.backends import BACKENDS

    assert {name: cls.name for name, cls in BACKENDS.items()} == {n: n for n in BACKENDS}
    modules = loaded_after("pet.backends", then="from pet.backends import BACKENDS, get_backend\n"
                           "get_backend('plaintext')\nassert 'he' in BACKENDS")
    assert {"tenseal", "torch", "crypten", "cryptography"} & modules == set()


def test_a_site_serving_a_packaged_workload_loads_no_data_engine(tmp_path) -> None:
    """A site whose data is a packaged workload (lung, read from the file lifelines ships)
    starts without DuckDB, PostgreSQL's driver, Spark, sqlglot or lifelines: only a
    `source:` needs the engines."""
    from pet.certs import make_certificates

    certs = make_certificates(tmp_path / "certs", sites=["site-1"])
    config = tmp_path / "site.yaml"
    config.write_text(
        "name: site-1\nlisten: 127.0.0.1:0\ncoordinator: coordinator\n"
        f"tls: {{cert: {certs.cert('site-1')}, key: {certs.key('site-1')}, ca: {certs.ca}}}\n"
        "data: {workload: lung, sites: 3, part: site-1}\n"
        f"ledger: {tmp_path / 'ledger.sqlite'}\naudit: {tmp_path / 'audit.sqlite'}\n"
        "federation: [site-1, site-2, site-3]\n")
    modules = loaded_after("services.config", then="from services.config import read_site\n"
                           f"read_site({str(config)!r}).table()")
    assert {"duckdb", "psycopg", "pyspark", "sqlglot", "lifelines"} & modules == set()
