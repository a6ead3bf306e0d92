"""GGUF for llama.cpp, Ollama and LM Studio: llama.cpp's own converter, fetched from PyPI once, and
an Ollama Modelfile that carries the chat template and the end-of-turn token the run trained with.

    python -m finetune export runs/NAME --gguf q8_0 --out DIR     # uses this module

The converter (`convert_hf_to_gguf.py` with its `conversion/` package and `gguf-py`) ships inside
the source distribution of `llama-cpp-python` under `vendor/llama.cpp/`. Like the bundled model,
it is fetched with `pip download` into $FINETUNE_MODELS/_downloads and only those files are
extracted (nothing is compiled); it runs as a subprocess on a merged model folder. f32, f16, bf16
and q8_0 are written by the converter itself; k-quants would need llama.cpp's compiled
`llama-quantize`, which this project does not build.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable

from finetune import paths
from finetune.errors import ConfigError, ModelError

CONVERTER_PACKAGE = "llama-cpp-python==0.3.36"  # the sdist whose vendor/llama.cpp is used
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
TYPES = {  # --outtype of the converter -> what it is for
    "q8_0": "8-bit, about half the size of f16, answers within noise of the tuned model",
    "f16": "16-bit floats: the reference size, no quantization loss worth measuring",
    "bf16": "16-bit brain floats: the range of f32, for models trained in bf16",
    "f32": "32-bit floats: the merged weights as they are (largest)",
}


def check_types(types) -> list[str]:
    """The GGUF types asked for, in a stable order; ConfigError naming what is possible."""
    out = []
    for t in types or []:
        for name in str(t).replace(",", " ").split():
            name = name.strip().lower()
            if name not in TYPES:
                raise ConfigError(f"GGUF type '{name}' is not one of {', '.join(TYPES)} (k-quants "
                                  "such as q4_k_m need llama.cpp's compiled llama-quantize: "
                                  "quantize the f16 file with it).")
            if name not in out:
                out.append(name)
    return out


# --- the converter ------------------------------------------------------------------------------


def converter_dir() -> Path:
    return paths.cache_dir() / ("llama.cpp-" + CONVERTER_PACKAGE.split("==")[1])


def ensure_converter(log=print) -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py, fetched and extracted once."""

    def make(folder: Path) -> None:
        sdist = _fetch_sdist(log)
        log(f"Extracting llama.cpp's converter from {sdist.name}...")
        with tarfile.open(sdist) as tar:
            root = tar.getmembers()[0].name.split("/")[0] + "/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(root) and
                       any(m.name[len(root):] == p or (p.endswith("/") and m.name[len(root):]
                           .startswith(p)) for p in CONVERTER_PARTS)]
            if not any(m.name.endswith("convert_hf_to_gguf.py") for m in members):
                raise ModelError(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py: "
                                 f"delete it from {sdist.parent} and export again.")
            for m in members:
                m.name = m.name[len(root):]
            try:
                tar.extractall(folder, members=members, filter="data")
            except TypeError:  # Python before 3.10.12 / 3.11.4: no filter (members are checked)
                tar.extractall(folder, members=members)

    return paths.make_once(converter_dir(), "convert_hf_to_gguf.py", make)


def _fetch_sdist(log) -> Path:
    cache = paths.cache_dir()
    pattern = "llama_cpp_python-" + CONVERTER_PACKAGE.split("==")[1] + ".tar.gz"
    found = sorted(cache.glob(pattern))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    log(f"Fetching llama.cpp's converter ({CONVERTER_PACKAGE} source, 77 MB, once)...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(cache), CONVERTER_PACKAGE]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(pattern))
    if done.returncode != 0 or not found:
        raise ModelError(f"Could not fetch llama.cpp's converter ({CONVERTER_PACKAGE}) from PyPI: "
                         f"{(done.stderr or done.stdout).strip()[-400:]}\nCheck the network, or "
                         "export the merged model and convert it with llama.cpp yourself.")
    return found[-1]


def convert(model_dir: Path, outfile: Path, outtype: str, name: str = "",
            progress: Callable[[float, str], Any] | None = None, log=print) -> Path:
    """Write `outfile` (GGUF of `outtype`) from a merged model folder with llama.cpp's converter.
    Its full output goes to `outfile` + '.log'; ModelError with the reason when it fails."""
    converter = ensure_converter(log)
    outfile = Path(outfile)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(model_dir),
           "--outtype", outtype, "--outfile", str(outfile)]
    if name:
        cmd += ["--model-name", name]
    log_path = outfile.with_name(outfile.name + ".log")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=converter)
    shown = -1
    with open(log_path, "w", encoding="utf-8") as out:
        for line in _lines(proc.stdout):
            out.write(line + "\n")
            m = re.search(r"Writing:\s+(\d+)%", line)
            if m and progress is not None and int(m.group(1)) != shown:
                shown = int(m.group(1))
                progress(shown / 100, f"GGUF {outtype}: writing {shown}%")
            elif "Set model tokenizer" in line and progress is not None:
                progress(0.0, f"GGUF {outtype}: converting the tokenizer")
    if proc.wait() != 0 or not outfile.is_file():
        raise ModelError(_explain_failure(log_path.read_text(encoding="utf-8"), log_path))
    log_path.unlink()  # kept only when the conversion fails
    log(f"Wrote {outfile} ({outfile.stat().st_size / 1e6:.1f} MB)")
    return outfile


def _lines(stream):
    """Lines of the converter's output; tqdm's \\r-separated updates count as lines."""
    buf = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        for p in parts:
            if p.strip():
                yield p.decode("utf-8", errors="replace").rstrip()
    if buf.strip():
        yield buf.decode("utf-8", errors="replace").rstrip()


def _explain_failure(text: str, log_path: Path) -> str:
    tail = "\n".join(text.strip().splitlines()[-3:])
    if "pre-tokenizer was not recognized" in text:
        why = ("llama.cpp's converter does not know this model's tokenizer (its pre-tokenizer "
               "hash is not in the converter of " + CONVERTER_PACKAGE + "), so llama.cpp could "
               "not tokenize like transformers does. Export the merged model instead, or use a "
               "base model that llama.cpp supports.")
    elif "not supported" in text.lower() and "model" in text.lower():
        why = ("llama.cpp's converter does not support this model's architecture. Export the "
               "merged model (safetensors) instead.")
    elif "No module named" in text:
        why = ("the converter needs a Python package that is not installed: run `bash "
               "scripts/setup.sh` (requirements.txt pins what it needs).")
    else:
        why = "llama.cpp's converter failed."
    return f"GGUF conversion failed: {why}\nLast lines ({log_path}):\n{tail}"


# --- chat template -> Ollama ----------------------------------------------------------------------

_MARK = "\x1f{}\x1f"


def template_parts(tokenizer) -> dict | None:
    """The chat template cut into text around each role's content: {'system': (pre, post),
    'user': ..., 'assistant': ..., 'generation': text that starts an answer, 'default_system':
    the system prompt the template adds when a chat has none ('' if none)}. None when the
    template is not of that simple shape (the rendering of a sample chat is checked)."""
    def render(messages, gen=False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    def m(role, text):
        return {"role": role, "content": _MARK.format(text)}

    try:
        one = render([m("user", "U")])
        answered = render([m("user", "U"), m("assistant", "A")])
        turns = render([m("user", "U"), m("assistant", "A"), m("user", "V")])
        with_sys = render([m("system", "S"), m("user", "U")])
        gen = render([m("user", "U")], gen=True)
    except Exception:  # noqa: BLE001 - templates that refuse a role or shape: no parts
        return None
    u, s, a, v = (_MARK.format(x) for x in "USAV")
    try:
        head, user_post = one.split(u)
        between_ua, assistant_post = answered.split(u)[1].split(a)
        between_av = turns.split(a)[1].split(v)[0]          # assistant_post + user_pre
        sys_pre, rest = with_sys.split(s)
        between_su = rest.split(u)[0]                       # sys_post + user_pre
    except ValueError:
        return None
    if not (between_ua.startswith(user_post) and between_av.startswith(assistant_post)
            and gen.startswith(one)):
        return None
    assistant_pre = between_ua[len(user_post):]
    user_pre = between_av[len(assistant_post):]
    if not (between_su.endswith(user_pre) and head.endswith(user_pre)):
        return None
    sys_post = between_su[:len(between_su) - len(user_pre)]
    implicit = head[:len(head) - len(user_pre)]
    default_system = ""
    if implicit:
        if not (implicit.startswith(sys_pre) and implicit.endswith(sys_post)):
            return None
        default_system = implicit[len(sys_pre):len(implicit) - len(sys_post)]
    parts = {"system": (sys_pre, sys_post), "user": (user_pre, user_post),
             "assistant": (assistant_pre, assistant_post), "generation": gen[len(one):],
             "default_system": default_system}
    sample = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name?"}]
    if render_parts(parts, sample, gen=True) != render(sample, gen=True):
        return None
    return parts


def render_parts(parts: dict, messages: list[dict], gen: bool = False) -> str:
    """What the Ollama template made from `parts` produces for `messages` (with the template's
    default system prompt when there is none): the check that the two templates agree."""
    if parts["default_system"] and not any(x["role"] == "system" for x in messages):
        messages = [{"role": "system", "content": parts["default_system"]}] + messages
    text = "".join(parts[x["role"]][0] + x["content"] + parts[x["role"]][1] for x in messages)
    return text + (parts["generation"] if gen else "")


def end_of_turn(tokenizer) -> list[int]:
    """Token ids that end an answer: special tokens right after the assistant's content in the
    chat template (e.g. <|im_end|>, <|eot_id|>), then the tokenizer's end-of-sequence token."""
    ids: list[int] = []
    parts = template_parts(tokenizer)
    if parts is not None:
        special = set(tokenizer.all_special_ids) | {
            i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        for i in tokenizer(parts["assistant"][1], add_special_tokens=False)["input_ids"]:
            if i in special:
                ids.append(int(i))
                break
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def _go_text(text: str) -> str:
    if "{{" in text:  # a template delimiter in a chat template's text: keep it literal
        text = text.replace("{{", '{{"{{"}}')
    return text


def modelfile(gguf_name: str, tokenizer, system: str = "", others: list[str] = ()) -> str:
    """An Ollama Modelfile for `gguf_name` (in the same folder): the run's chat template as an
    Ollama TEMPLATE, its end-of-turn tokens as stop parameters, and `system` (or the template's
    default system prompt) as SYSTEM."""
    parts = template_parts(tokenizer)
    stops = [tokenizer.convert_ids_to_tokens(i) for i in end_of_turn(tokenizer)]
    lines = ["# Ollama: ollama create NAME -f Modelfile && ollama run NAME",
             f"FROM ./{gguf_name}"]
    lines += [f"# or FROM ./{o}" for o in others]
    if parts is None:
        lines.append("# The chat template is not of a shape this tool can translate; Ollama "
                     "reads the one inside the GGUF file.")
    else:
        body = "{{ range .Messages }}"
        for n, role in enumerate(("system", "user", "assistant")):
            pre, post = (_go_text(x) for x in parts[role])
            body += ("{{ if" if n == 0 else "{{ else if") + f' eq .Role "{role}" }}}}' \
                + f"{pre}{{{{ .Content }}}}{post}"
        body += "{{ end }}{{ end }}" + _go_text(parts["generation"])
        lines.append(f'TEMPLATE """{body}"""')
    system = system or (parts or {}).get("default_system", "")
    if system:
        lines.append(f'SYSTEM """{system}"""')
    for stop in stops:
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"
