# Sourced by bench/gpu_check.sh and scripts/gpu-job.sh (from the repository's root): the environment a lent
# GPU machine needs to run soundwatch from its working tree. Only the tree travels there and soundwatch is not
# installed, so the tree goes on PYTHONPATH; its image lacks soundfile (and cffi, pycparser) and
# efficientnet-lite-pytorch, which `python scripts/gpu_job.py pack` downloads as wheels into .gpujob/wheels:
# installed into a temporary folder when either does not import. Sets SOUNDWATCH_COMMIT from .gpujob/commit where .git did not travel.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python3 -c "import soundfile, efficientnet_lite_pytorch" 2>/dev/null && compgen -G ".gpujob/wheels/*.whl" >/dev/null
then
  lent_site=$(mktemp -d)
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$lent_site" \
      .gpujob/wheels/*.whl; then
    export PYTHONPATH="$lent_site:$PYTHONPATH"
  fi
fi
if ! git rev-parse --git-dir >/dev/null 2>&1 && [ -f .gpujob/commit ]; then
  SOUNDWATCH_COMMIT="$(cat .gpujob/commit)"
  export SOUNDWATCH_COMMIT
fi
