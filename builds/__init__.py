"""Where images come from: git fetch, recipes (Dockerfile detection and generation), wheels, engine
builds, the images of PyPI package sources and the OCI registry client. Nothing here runs a hosted
server; that is `runtimes/`, which receives the package image builder rather than importing it."""
