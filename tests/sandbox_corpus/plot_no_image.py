# expect: invalid_output
# kind: plot
x = sum(range(10))
