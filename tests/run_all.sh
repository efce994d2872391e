#!/usr/bin/env bash
# Every check of the project, Rust and Python. Run from anywhere after
# `pip install '.[test]'`; README's second command and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --all --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (Rust core)"
cargo test --workspace --locked
echo "== mypy --strict (the Python package)"
python -m mypy --strict python/plugin_scheduling
echo "== stubtest (_core.pyi against the built extension)"
python -m mypy.stubtest plugin_scheduling._core --allowlist tests/stubtest_allowlist.txt
echo "== mkdocs build --strict (the docs site; tests/test_readme.py builds it too)"
site_dir="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict --site-dir "$site_dir" --quiet
rm -rf "$site_dir"
echo "== pytest"
# pytest exits 5 when it collected no test: set -e makes that a failure.
python -m pytest -p no:cacheprovider
