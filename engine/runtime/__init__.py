"""Runtime: wiring the engine together, the channel runner, queues and periodic sweeps."""
