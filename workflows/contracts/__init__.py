"""The contract between the API (and the worker's own starts) and the platform's workflows.

One module per workflow family holds what a caller needs: the workflow's input, its result and what its
queries answer, and a stub (`@workflow.defn` with the real workflow's name) that declares its run method,
queries, updates and signals, so starting, querying, updating and signalling it is typed and by method,
never by string. The workflow modules take their types from here. `starters` starts each workflow.

These modules import only the standard library, temporalio and core/ (never activities, builds, runtimes
or a workflow module): loading them loads none of the worker's code, and they are safe in the workflow
sandbox.
"""
