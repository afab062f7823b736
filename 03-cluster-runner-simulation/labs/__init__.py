"""The lab runner's experiments and exercise checks for weeks 2-4, and its machinery (kit.py).

The command is ``python 01-zmq-basics/labs.py`` (``list`` shows everything); it adds
week2.py (the cluster), week3.py (the node agent) and week4.py (operations) to the week-1
experiments. For the course only: production modules never import this package.
"""
