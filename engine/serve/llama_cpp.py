"""llama.cpp's tools on this machine: its converter (convert_hf_to_gguf.py, from llama.cpp sources) and
its quantizer (llama-cpp-python's binding, or a llama-quantize program), as `doctor` and `export` report.

Sources are looked for, in order: $LLM_WIZARD_LLAMA_CPP (a llama.cpp folder, such as the vendor/llama.cpp
that llama-cpp-python's source distribution carries), <cache>/llama.cpp, ~/llama.cpp, and a
convert_hf_to_gguf.py on PATH. Nothing here is downloaded: `llama-cpp-python` built from source (pip
install llama-cpp-python) brings the quantizer; its source archive (pip download --no-deps --no-binary
:all: llama-cpp-python) holds the sources in vendor/llama.cpp.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError

ENV = "LLM_WIZARD_LLAMA_CPP"
CONVERTER = "convert_hf_to_gguf.py"
QUANTIZE_PROGRAM = "llama-quantize"
FETCH_HINT = (f"pip download --no-deps --no-binary :all: llama-cpp-python, unpack it, and set {ENV} to its "
              "vendor/llama.cpp folder (or clone llama.cpp there)")


@dataclass(frozen=True)
class Tools:
    converter: str | None  # convert_hf_to_gguf.py
    converter_from: str | None  # where it was found (the variable, the cache, PATH)
    quantizer: str | None  # "llama-cpp-python <version>" or a llama-quantize path
    binding: str | None  # llama-cpp-python's version, when importable (it loads GGUF files too)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        conv = f"converter {self.converter} ({self.converter_from})" if self.converter else \
            "no converter (GGUF written by the gguf package for llama, qwen2 and gpt2)"
        quant = f"quantizer {self.quantizer}" if self.quantizer else "no quantizer (q4_k_m unavailable)"
        return f"{conv}; {quant}"


def _cache_dir() -> Path:
    from engine.paths import cache_dir

    return cache_dir()


def _binding_version() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:  # noqa: BLE001 - importable but without metadata: still there
        return "unknown"


def locate() -> Tools:
    """What this machine has; imports nothing heavy (llama_cpp is only looked up, not loaded)."""
    candidates: list[tuple[Path, str]] = []
    if os.environ.get(ENV):
        candidates.append((Path(os.environ[ENV]).expanduser(), f"${ENV}"))
    candidates += [(_cache_dir() / "llama.cpp", "the llm-wizard cache"), (Path.home() / "llama.cpp", "~/llama.cpp")]
    converter = origin = None
    for folder, where in candidates:
        if (folder / CONVERTER).is_file():
            converter, origin = str(folder / CONVERTER), where
            break
    if converter is None and shutil.which(CONVERTER):
        converter, origin = shutil.which(CONVERTER), "PATH"
    binding = _binding_version()
    program = shutil.which(QUANTIZE_PROGRAM)
    if program is None and converter is not None:  # a llama.cpp checkout that was built
        built = Path(converter).parent / "build" / "bin" / QUANTIZE_PROGRAM
        program = str(built) if built.is_file() else None
    quantizer = f"llama-cpp-python {binding}" if binding else program
    return Tools(converter, origin, quantizer, binding)


def convert(tools: Tools, merged: Path, out: Path, outtype: str) -> None:
    """Run llama.cpp's converter on a transformers folder; a failure raises ConverterFailed with its last line."""
    assert tools.converter is not None
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # its own gguf-py, matching its code
    done = subprocess.run([sys.executable, tools.converter, str(merged), "--outfile", str(out), "--outtype", outtype],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not out.is_file():
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise ConverterFailed(lines[-1] if lines else f"exit code {done.returncode}")


class ConverterFailed(Exception):
    """llama.cpp's converter refused the model (an unknown tokenizer, a missing dependency); str() is why."""


# llama.cpp's names for the types its quantizer writes (llama.h LLAMA_FTYPE_*)
FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def quantize(tools: Tools, source: Path, out: Path, quant: str) -> None:
    """A 16-bit GGUF quantized by llama.cpp (through llama-cpp-python's binding, or llama-quantize)."""
    if tools.binding:
        import ctypes

        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, FTYPES[quant])
        params.nthread = os.cpu_count() or 1
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
        if rc != 0 or not out.is_file():
            raise UserError(f"llama.cpp's quantizer failed ({rc}) writing {quant}", field="quant")
        return
    if not tools.quantizer:
        raise UserError(f"--quant {quant} needs llama.cpp's quantizer: pip install llama-cpp-python", field="quant")
    done = subprocess.run([tools.quantizer, str(source), str(out), quant.upper()], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0 or not out.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(f"llama-quantize failed writing {quant}: {tail[-1] if tail else done.returncode}",
                        field="quant")
