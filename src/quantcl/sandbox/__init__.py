"""Run untrusted Python (model-generated code) in a separate, limited, throwaway process.

Each run gets the best isolation the machine allows (``SandboxResult.isolation_mode``):
``"bubblewrap"`` where ``bwrap`` works (a file system of its own, private namespaces; see
``quantcl.sandbox._bwrap``), else the weaker built-in ``"namespaces"`` (host file system, private
network/PID/IPC) or ``"rlimits"`` (limits and a socket guard). In every mode a runner applies
resource limits, switches root to a uid of the sandbox's own, dies with the evaluator and kills the
program at its wall-clock limit by itself; afterwards everything is killed and removed (what a
killed evaluator left, on the next run). docs/evaluators.md says what each mode leaves open.

Examples:
    >>> from quantcl.sandbox import run_sandboxed
    >>> run_sandboxed("assert 1 + 1 == 2", timeout=2.0).status
    'passed'
"""

from quantcl.sandbox._run import (
    IsolationChoice,
    IsolationMode,
    SandboxLimits,
    SandboxResult,
    Status,
    bubblewrap_status,
    check_isolation,
    run_many,
    run_sandboxed,
)

__all__ = ["SandboxLimits", "SandboxResult", "run_sandboxed", "run_many", "bubblewrap_status", "check_isolation",
           "IsolationChoice", "IsolationMode", "Status"]
