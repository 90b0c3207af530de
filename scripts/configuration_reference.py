"""Writes docs/configuration.md from the settings' own declarations (common.env.setting).

    python scripts/configuration_reference.py > docs/configuration.md

tests/test_configuration_reference.py fails when the committed file and this output differ, so the
reference cannot drift from what the code reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.env import reference  # noqa: E402
from common.limits import RequestLimits  # noqa: E402
from gateway.settings import GatewaySettings, ServingSettings  # noqa: E402
from model_server.settings import ModelServerSettings  # noqa: E402

_OTHERS = [
    ("LOG_LEVEL", "`INFO`", "Both processes"),
    ("LOG_FORMAT", "`text`", "Both processes; `json` gives one JSON object per line. Every line about a job "
                             "carries its job id and the request id."),
    ("HF_HOME, HF_HUB_OFFLINE", "huggingface_hub's", "Where downloads are cached; `1` never touches the network"),
    ("PROMETHEUS_MULTIPROC_DIR", "a temporary folder", "Where gunicorn's workers merge their metrics; removed at exit "
                                                       "when the gateway made it"),
    ("TORCH_INDEX_URL", "the PyTorch CPU index", "`scripts/setup-venv.sh`: where torch 2.13.0 (CPU) comes from when "
                                                 "pip has no local wheel"),
    ("VENV", "`.venv`", "`scripts/run.sh`, `scripts/test.sh`: the virtualenv they set up and use"),
]


def table(rows) -> str:
    lines = ["| variable | default | what it does |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {default} | {doc} |" for name, default, doc in rows]
    return "\n".join(lines)


def own(cls, base) -> list:
    inherited = {row[0] for row in reference(base)}
    return [row for row in reference(cls) if row[0] not in inherited]


def render() -> str:
    sections = [
        ("Request limits (both processes read them)", reference(RequestLimits)),
        ("Model server", own(ModelServerSettings, RequestLimits)),
        ("Gateway", own(GatewaySettings, RequestLimits)),
        ("Gateway process (gunicorn)", reference(ServingSettings)),
        ("Other variables", _OTHERS),
    ]
    out = ["# Configuration", "",
           "Everything comes from environment variables. This page is generated from the settings' declarations "
           "(`gateway/settings.py`, `model_server/settings.py`, `common/limits.py`) by "
           "`python scripts/configuration_reference.py > docs/configuration.md`; a test fails when they differ.", ""]
    for title, rows in sections:
        out += [f"## {title}", "", table(rows), ""]
    return "\n".join(out)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    sys.stdout.write(render())
