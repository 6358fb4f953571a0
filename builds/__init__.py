"""Where images come from: git fetch, recipes (Dockerfile detection and generation), wheels, engine
builds and the OCI registry client. Nothing here runs a hosted server; that is `runtimes/`."""
