"""Runtime helpers every layer uses: errors, devices, seeding, processes, atomic writes, paths, provenance and
metric logs."""
