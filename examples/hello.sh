#!/usr/bin/env bash
# The smallest execution: greets its arguments and leaves a result file behind.
echo "hello ${*:-world} from $(hostname) (slot ${RUNAWAY_HANDLE_ID:-?}, run ${RUNAWAY_UUID:-?})"
echo "$*" > greeting.txt
