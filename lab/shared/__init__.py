"""What the host and the guests both import: standard library only, no effects at import.

The tools image ships this package into L1 as it is (tools/lab/shared/), so L1's runner
imports the same files under the same names as the host does.
"""
