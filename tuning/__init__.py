"""Ray Tune sweeps over dtmem configs (search spaces in ``tuning/*.yaml``)."""
