#!/bin/bash
# Stand-in for GitHub's runner's run-helper.sh: refuses root unless RUNNER_ALLOW_RUNASROOT is set (exit 1), and
# maps Runner.Listener's exit codes as the real one does (0 and 1: stop, no retry; 2, 3, 4: restart).

user_id=`id -u`
if [ $user_id -eq 0 -a -z "$RUNNER_ALLOW_RUNASROOT" ]; then
    echo "Must not run interactively with sudo"
    exit 1
fi

SOURCE="${BASH_SOURCE[0]}"
DIR="$( cd -P "$( dirname "$SOURCE" )" >/dev/null && pwd )"

"$DIR"/bin/Runner.Listener run $*
returnCode=$?
if [[ $returnCode == 0 ]]; then
    echo "Runner listener exit with 0 return code, stop the service, no retry needed."
    exit 0
elif [[ $returnCode == 1 ]]; then
    echo "Runner listener exit with terminated error, stop the service, no retry needed."
    exit 0
elif [[ $returnCode == 2 ]]; then
    echo "Runner listener exit with retryable error, re-launch runner in 5 seconds."
    exit 2
elif [[ $returnCode == 3 || $returnCode == 4 ]]; then
    echo "Runner listener exit because of updating, re-launch runner."
    exit 2
else
    echo "Exiting with unknown error code: ${returnCode}"
    exit 0
fi
