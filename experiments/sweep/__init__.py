"""`make sweep`: a grid of normal runs from conf/sweep/<name>.yaml (`grid` pure, `run` the loop, `k8s` an indexed Job over the grid)."""
