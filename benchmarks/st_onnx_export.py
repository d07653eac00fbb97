"""Write sentence-transformers' own ONNX and ONNX-int8 (avx2) exports of a model, for
``bench_backends.py speed --st-onnx DIR`` to run side by side with embedforge's backends.

sentence-transformers' ONNX backend needs ``optimum-onnx``, which pins transformers < 4.58, so it
cannot live in embedforge's environment (transformers 5.x). Run this script once in a separate
environment; the benchmark then runs the very graphs that ``SentenceTransformer(backend="onnx")``
runs (ONNX Runtime on ``onnx/model.onnx`` / ``onnx/model_quint8_avx2.onnx``, then the model's
pooling and normalisation), in embedforge's process, interleaved with the other methods::

    python -m venv /tmp/stvenv && . /tmp/stvenv/bin/activate
    pip install torch==2.13.0 && pip install "optimum-onnx[onnxruntime]" "sentence-transformers<6"
    python benchmarks/st_onnx_export.py MODEL_DIR /tmp/st-onnx/minilm
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="a sentence-transformers model directory")
    p.add_argument("out", type=Path, help="output directory (a copy of the model plus onnx/)")
    args = p.parse_args()

    import optimum.onnxruntime  # noqa: F401  (fails early with the reason when missing)
    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    if args.out.exists():
        raise SystemExit(f"{args.out} exists: remove it or choose another directory")
    shutil.copytree(args.model, args.out)
    model = SentenceTransformer(str(args.out), backend="onnx", device="cpu")  # exports onnx/model.onnx
    model.save_pretrained(str(args.out))
    export_dynamic_quantized_onnx_model(model, "avx2", str(args.out))
    info = {
        "source": str(args.model),
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "graphs": sorted(str(p.relative_to(args.out)) for p in (args.out / "onnx").glob("*.onnx")),
    }
    (args.out / "st_onnx_export.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
