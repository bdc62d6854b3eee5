#!/usr/bin/env bash
# verify.sh - checks that vendor/<crate> is the crates.io release plus only the hunks marked
# "portcullis:" (listed in its PORTCULLIS.md). Downloads the release from static.crates.io, or
# uses ~/.cargo/registry/src when it is there. Exit 1 on any other difference, 2 when a release
# cannot be fetched.
#
# usage: vendor/verify.sh            (all vendored crates)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
bad=0
for dir in "$HERE"/*/; do
  dir=${dir%/}
  [[ -f $dir/Cargo.toml && -f $dir/PORTCULLIS.md ]] || continue
  name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
  orig=$(ls -d "$HOME"/.cargo/registry/src/*/"$name-$version" 2>/dev/null | head -1 || true)
  if [[ -z $orig ]]; then
    if ! curl -fsSL --retry 2 "https://static.crates.io/crates/$name/$name-$version.crate" -o "$TMP/$name.crate" ||
      ! tar -xzf "$TMP/$name.crate" -C "$TMP"; then
      echo "verify: cannot fetch $name $version from static.crates.io" >&2
      exit 2
    fi
    orig=$TMP/$name-$version
  fi
  # Files that differ, other than the lock file (not vendored) and our note.
  changed=$(diff -rq "$orig" "$dir" | grep -v -e "Only in $orig: Cargo.lock" -e "Only in $orig: .cargo-ok" -e "Only in $dir: PORTCULLIS.md" || true)
  while IFS= read -r line; do
    [[ -n $line ]] || continue
    if [[ $line != Files* ]]; then
      echo "verify: $name: $line" >&2; bad=1; continue
    fi
    f=$(awk '{print $4}' <<<"$line")
    rel=${f#"$dir"/}
    # Every changed hunk must be within 6 lines of a "portcullis:" comment in the new file.
    marks=$(grep -n 'portcullis:' "$f" | cut -d: -f1 | tr '\n' ' ')
    if ! { diff -U0 "$orig/$rel" "$f" || true; } | awk -v marks="$marks" '
        BEGIN { n = split(marks, m, " ") }
        /^@@/ {
          split($3, r, ","); start = substr(r[1], 2) + 0; len = (r[2] == "" ? 1 : r[2] + 0)
          ok = 0
          for (i = 1; i <= n; i++) if (m[i] >= start - 6 && m[i] <= start + len + 6) ok = 1
          if (!ok) bad = 1
        }
        END { exit bad + 0 }'; then
      echo "verify: $name $version: $rel has a change without a 'portcullis:' comment" >&2; bad=1
    else
      echo "verify: $name $version: $rel (patched, marked)"
    fi
  done <<<"$changed"
done
exit $bad
