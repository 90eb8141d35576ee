"""Collect each remote-code family's published files from local git mirrors into $DLM_TRIAGE_REMOTE_CODE.

The repository never holds third-party code: this script only names *where* each family's files live in public
repositories (repository, commit, path) and copies them out of mirrors you already have (e.g. made with
`git clone --mirror`), into a directory outside the checkout that the `remote_code` tests read at run time:

    python scripts/extract_remote_code.py --mirrors /work/.mirror --out /work/remote-code \
        [--file mdlm/modeling_mdlm.py=/path/to/modeling_mdlm.py ...]

A mirror of `owner/name` is looked up as `<mirrors>/owner+name/repo` or `<mirrors>/owner+name` (a bare or
normal git directory). Files with no public git copy (MDLM's hub files) are given with `--file
family/name=PATH`. Each family directory gets a SOURCES.json: where every file came from and its sha256, and
whether the copy is believed identical to what the model hub serves (`hub_identical`) or an edited copy.

Layout written (the tests need at least the two .py files per family; config.json where one was published):

    <out>/llada/      modeling_llada.py configuration_llada.py config.json tokenizer_config.json
                      special_tokens_map.json generation_config.json
    <out>/llada_moe/  modeling_lladamoe.py configuration_lladamoe.py
    <out>/llada2/     modeling_llada2_moe.py configuration_llada2_moe.py config.json
    <out>/dream/      modeling_dream.py configuration_dream.py generation_utils.py tokenization_dream.py
    <out>/mdlm/       modeling_mdlm.py configuration_mdlm.py          (from --file)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

# family -> [(dest name, repo, commit, path in repo, hub_identical, note)]
# hub_identical: True where two or more independent public copies agree byte for byte (or the copy is a full
# hub snapshot with the hub's .gitattributes), False for a copy known to be edited, None where unknown.
SOURCES: dict[str, list[tuple[str, str, str, str, bool | None, str]]] = {
    "llada": [
        (name, "QuentinFitteRey/LLada-Reasoning", "4bfec79d1d9f06cbb9928479dac293763c4c98d6",
         f"llada_local_instruct/{name}", True,
         "snapshot of GSAI-ML/LLaDA-8B-Instruct (hub .gitattributes and safetensors index beside it)")
        for name in ("modeling_llada.py", "configuration_llada.py", "config.json", "tokenizer_config.json",
                     "special_tokens_map.json", "generation_config.json")
    ],
    "llada_moe": [
        ("modeling_lladamoe.py", "InfiniTensor/InfiniLM", "0a7e522afb6079a30c7ecb50ce8abafe6cc3f808",
         "modeling_lladamoe.py", None,
         "first public copy; imports LLaDAConfig (model_type 'llada') like the hub; dllm's copy renames the "
         "config class and edits the attention mask"),
        ("configuration_lladamoe.py", "InfiniTensor/InfiniLM", "239f1d707f54c1e95ad2ec282842a3ed87038f05",
         "configuration_lladamoe.py", None, "LLaDAConfig, model_type 'llada'"),
    ],
    "llada2": [
        ("modeling_llada2_moe.py", "ZHZisZZ/dllm", "ca176752fbceec49c6b4777a2c18ae88e4eb10ed",
         "dllm/pipelines/llada2/models/modeling_llada2_moe.py", False,
         "dllm's copy (reformatted; no veomni imports); dFactory's is a VeOmni-specific edit"),
        ("configuration_llada2_moe.py", "ZHZisZZ/dllm", "ca176752fbceec49c6b4777a2c18ae88e4eb10ed",
         "dllm/pipelines/llada2/models/configuration_llada2_moe.py", False, "model_type 'llada2_moe'"),
        ("config.json", "inclusionAI/dFactory", "92b6890808088b112fcf5fc73a341b78b6ab76bf",
         "configs/model_configs/llada2_mini/config.json", False,
         "LLaDA2.0-mini's architecture values; model_type there is 'llada2_moe_veomni' (tests use 'llada2_moe')"),
    ],
    "dream": [
        *((name, "ZHZisZZ/dllm", "ca176752fbceec49c6b4777a2c18ae88e4eb10ed", f"dllm/pipelines/dream/models/{name}",
           None, "dllm's copy (relative imports, as a hub checkpoint's files must have); it adds a 2D->4D "
           "attention-mask conversion that zhaoyMa/Saber's copy lacks")
          for name in ("modeling_dream.py", "configuration_dream.py", "tokenization_dream.py")),
        ("generation_utils.py", "zhaoyMa/Saber", "2f061e2e07359e27479174e862f46db5f9791c6c",
         "Dream/generation_utils.py", None,
         "DreamGenerationConfig.validate(self, is_init=False) without **kwargs; dllm's copy edits it to accept "
         "**kwargs, which hides the transformers 5 failure"),
    ],
    # No public git copy of the hub's modeling_mdlm.py was found; give its files with --file. Used for the tests:
    # the hub's configuration_mdlm.py (740 bytes) and a public CPU fork of modeling_mdlm.py (14022 bytes; its
    # docstring lists the edits: flash_attn's rotary and varlen attention replaced by torch code). The hub file
    # itself imports flash_attn at module level and calls its CUDA kernels in the forward.
    "mdlm": [],
}
REQUIRED = {
    "llada": ("modeling_llada.py", "configuration_llada.py"),
    "llada_moe": ("modeling_lladamoe.py", "configuration_lladamoe.py"),
    "llada2": ("modeling_llada2_moe.py", "configuration_llada2_moe.py"),
    "dream": ("modeling_dream.py", "configuration_dream.py", "generation_utils.py"),
    "mdlm": ("modeling_mdlm.py", "configuration_mdlm.py"),
}


def mirror_dir(mirrors: Path, repo: str) -> Path:
    base = mirrors / repo.replace("/", "+")
    for cand in (base / "repo", base):
        if (cand / "HEAD").exists() or (cand / ".git").exists():
            return cand
    raise SystemExit(f"no git mirror of {repo} under {mirrors} (looked for {base}/repo and {base}): "
                     f"clone it there (git clone --mirror https://github.com/{repo} {base}/repo)")


def git_show(gitdir: Path, commit: str, path: str) -> bytes:
    out = subprocess.run(["git", "-C", str(gitdir), "show", f"{commit}:{path}"], capture_output=True)
    if out.returncode:
        raise SystemExit(f"{gitdir}: cannot read {commit[:12]}:{path}: {out.stderr.decode().strip()} "
                         "(fetch that commit into the mirror)")
    return out.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirrors", type=Path, required=True, help="directory holding owner+name git mirrors")
    ap.add_argument("--out", type=Path, required=True, help="the DLM_TRIAGE_REMOTE_CODE directory to write")
    ap.add_argument("--file", action="append", default=[], metavar="FAMILY/NAME=PATH",
                    help="a file from elsewhere (e.g. mdlm/modeling_mdlm.py=/path); may repeat")
    ap.add_argument("--families", default=",".join(SOURCES), help="comma-separated subset")
    args = ap.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = set(families) - set(SOURCES)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}: use some of {sorted(SOURCES)}")
    extra: dict[str, list[tuple[str, Path]]] = {}
    for spec in args.file:
        key, _, path = spec.partition("=")
        fam, _, name = key.partition("/")
        if not (fam and name and path):
            raise SystemExit(f"--file {spec!r}: use FAMILY/NAME=PATH, e.g. mdlm/modeling_mdlm.py=/tmp/m.py")
        extra.setdefault(fam, []).append((name, Path(path)))
    for fam in families:
        dest = args.out / fam
        dest.mkdir(parents=True, exist_ok=True)
        record = []
        for name, repo, commit, path, hub, note in SOURCES[fam]:
            data = git_show(mirror_dir(args.mirrors, repo), commit, path)
            (dest / name).write_bytes(data)
            record.append(dict(file=name, repo=repo, commit=commit, path=path, hub_identical=hub, note=note,
                               sha256=hashlib.sha256(data).hexdigest()))
        for name, path in extra.get(fam, []):
            data = path.read_bytes()
            (dest / name).write_bytes(data)
            record.append(dict(file=name, source=str(path), hub_identical=None,
                               sha256=hashlib.sha256(data).hexdigest()))
        (dest / "SOURCES.json").write_text(json.dumps(record, indent=2) + "\n")
        missing = [n for n in REQUIRED[fam] if not (dest / n).exists()]
        status = f"missing {missing}" if missing else "complete"
        print(f"{fam}: {len(record)} file(s) -> {dest} ({status})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
