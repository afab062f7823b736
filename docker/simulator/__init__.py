"""The cluster simulator: docker/simulate-cluster.sh's program, importable as cluster_simulator.

It starts the 02 cluster (coordinator, workers, monitor) on a backend, injects faults and
checks invariants. Layers, from the command line down:

    cli        argparse over the table of verbs; exit codes; the undo on every exit
    verbs      every command's name, help line, arguments and runner
    commands   build, start, stop, status, cleanup, logs, workload, demo, compare
    faults     fail, recover, partition, heal, pause, resume, slow, flaky, fast
    scenario   `test`: workloads during faults, invariants, the figures table
    backend    the Backend interface; DockerBackend (docker_backend, compose) and
               LocalBackend (local_backend, netns, relay)
    roles      the command line of every 02 role, for both backends
    config, lifecycle, output, ports, monitor_api: settings, signals, messages, checks

Run it through the wrapper: ./docker/simulate-cluster.sh help
"""
