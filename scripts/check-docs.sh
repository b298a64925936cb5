#!/usr/bin/env bash
# Documentation checks CI runs: rustdoc with warnings denied (broken links,
# missing docs), and no source file over 600 lines without a reason at its
# top ("Why this file is long:").
set -euo pipefail
cd "$(dirname "$0")/.."

RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features -q

long=0
while IFS= read -r file; do
  lines=$(wc -l < "$file")
  if [ "$lines" -gt 600 ] && ! head -40 "$file" | grep -q "Why this file is long:"; then
    echo "$file: $lines lines and no 'Why this file is long:' at its top" >&2
    long=1
  fi
done < <(git ls-files '*/src/*.rs' '*/src/**/*.rs' | sort -u)
exit "$long"
