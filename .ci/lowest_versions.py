"""Print pip constraints that pin every dependency of pyproject.toml (and of its test extra)
to its lower bound: ``name>=1.2`` becomes ``name==1.2``. Requirements without a lower bound
are left to pip."""

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    bound = re.fullmatch(r"([\w.-]+)(?:\[[\w,.-]+\])?>=([\w.]+)(?:,.*)?", requirement)
    if bound:
        print(f"{bound[1]}=={bound[2]}")
