"""Known-answer tests: the graded organism's planted preference against what the tool measures
(``amps-eval validate``)."""
