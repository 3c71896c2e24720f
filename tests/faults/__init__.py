"""The fault suite of "Reliability under faults": scenarios (scenarios.py, hostile.py), run small by
test_faults_small.py and full by scripts/faults.py."""
