#!/usr/bin/env bash
# Post the speed gate's summary on its pull request as one comment, or update the one posted before (found by its
# marker), so a re-run never adds a second. Usage: gate-comment.sh FOLDER (holding pr-number and gate.md, from the
# gate's artifact). Needs gh, GH_TOKEN, REPO (owner/name) and RUN_ID (the gate's run, for the dashboard's link).
set -euo pipefail
folder="$1"
pr="$(cat "$folder/pr-number")"
case "$pr" in ''|*[!0-9]*) echo "gate-comment: not a pull request number: '$pr'" >&2; exit 1;; esac
dashboard="$(gh api "repos/$REPO/actions/runs/$RUN_ID/artifacts" \
    --jq '.artifacts[] | select(.name == "optcv-dashboard") | .id')"
marker='<!-- optcv speed gate -->'
body="$(mktemp)"
{
    echo "$marker"
    cat "$folder/gate.md"
    echo
    if [ -n "$dashboard" ]; then
        echo "History dashboard: [optcv-dashboard](https://github.com/$REPO/actions/runs/$RUN_ID/artifacts/$dashboard) (unzip, open index.html)."
    fi
} > "$body"
existing="$(gh api "repos/$REPO/issues/$pr/comments" --paginate \
    --jq ".[] | select(.body | startswith(\"$marker\")) | .id" | head -n 1)"
if [ -n "$existing" ]; then
    gh api --method PATCH "repos/$REPO/issues/comments/$existing" -F "body=@$body" > /dev/null
    echo "updated comment $existing on pull request $pr"
else
    gh api --method POST "repos/$REPO/issues/$pr/comments" -F "body=@$body" > /dev/null
    echo "posted a comment on pull request $pr"
fi
rm -f "$body"
