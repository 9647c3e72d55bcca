"""Pure logic of erlmcp_ray: no ``import ray`` anywhere below this package.

Layout:
    codec        value encoding (msgpack, once, in the client) and key checks
    vclock       version vectors keyed by stable slot ids
    hlc          hybrid logical clock with an injected physical clock
    record       the packed, self-contained form of one versioned entry
    oplog        bounded operation log with sequence numbers (deltas)
    shard_state  one shard copy: apply_local / apply_remote / merge / since / digest
"""
