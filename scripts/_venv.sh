# Sourced by scripts/*: make .venv and install the package with its dev and notebooks extras, once per change of
# pyproject.toml.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.erlmcp-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,notebooks]"
  touch "$stamp"
fi
