"""Schemathesis against bin/api over HTTP, with the reference's description of these
operations and with the one the API serves: no 5xx, every response as documented.

All of schemathesis's checks run. `positive_data_acceptance` is told that a schema-valid
request may also be answered 400: the reference refuses well-formed requests that name things
which do not exist ("Source VM not found", an `order_column` other than id or name), and so
does this API. It is also told that 5xx is never acceptable, which its default allows.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib import ubid
from lib.api import openapi
from spec.support.api import Api
from spec.support.api_server import api_server
from spec.support.processes import ROOT

REFERENCE = ROOT.parent / "shared" / "reference" / "openapi-machine-image.yml"
DOCUMENTS = ["served", *(["reference"] if REFERENCE.exists() else [])]


def schemathesis(document: str, base: str, token: str,
                 config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
         document, "--url", base, "-H", f"Authorization: Bearer {token}", "--checks", "all",
         "--max-examples", "25",
         "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=config.parent)


@pytest.mark.parametrize("document", DOCUMENTS)
async def test_schemathesis_finds_no_failure(api: Api, database_url: str, tmp_path: Path,
                                             document: str) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\nproject_id = "{ubid.to_ubid(api.world.project_id)}"\n'
                      'location = "lab"\nmachine_image_reference = "base"\n'
                      '[checks.positive_data_acceptance]\n'
                      'expected-statuses = ["2xx", "400", "401", "404"]\n')
    with api_server(database_url, tmp_path / "api.log") as served:
        base = served.base
        source = f"{base}/openapi.json" if document == "served" else str(REFERENCE)
        result = await asyncio.to_thread(schemathesis, source, base, api.token, config)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "Tested: 10" in result.stdout


def test_the_served_description_has_the_reference_operations() -> None:
    served = {(path, method): operation["operationId"]
              for path, item in openapi.DOCUMENT["paths"].items()
              for method, operation in item.items() if method != "parameters"}
    base = "/project/{project_id}/location/{location}/machine-image"
    assert served == {
        ("/project/{project_id}/machine-image", "get"): "listProjectMachineImages",
        (base, "get"): "listLocationMachineImages",
        (base + "/{machine_image_reference}", "post"): "createMachineImage",
        (base + "/{machine_image_reference}", "get"): "getMachineImage",
        (base + "/{machine_image_reference}", "patch"): "updateMachineImage",
        (base + "/{machine_image_reference}", "delete"): "deleteMachineImage",
        (base + "/{machine_image_reference}/rename", "post"): "renameMachineImage",
        (base + "/{machine_image_reference}/version", "get"): "listMachineImageVersions",
        (base + "/{machine_image_reference}/version/{version}", "post"):
            "createMachineImageVersion",
        (base + "/{machine_image_reference}/version/{version}", "delete"):
            "deleteMachineImageVersion",
    }
    if REFERENCE.exists():
        reference = yaml.safe_load(REFERENCE.read_text())
        assert {(path, method): operation["operationId"]
                for path, item in reference["paths"].items()
                for method, operation in item.items() if method != "parameters"} == served
        for name in ("MachineImage", "MachineImageVersion"):
            ours, theirs = (openapi.DOCUMENT["components"]["schemas"][name],
                            reference["components"]["schemas"][name])
            assert ours["required"] == theirs["required"]
            assert set(ours["properties"]) == set(theirs["properties"])
        patterns = {name: p["schema"].get("pattern")
                    for name, p in reference["components"]["parameters"].items()}
        assert params_patterns() == {k: v for k, v in patterns.items() if v}


def params_patterns() -> dict[str, str]:
    from lib.api import params

    return {"project_id": params.PROJECT, "machine_image_version": params.LABEL,
            "machine_image_new_name": params.NEW_NAME}
