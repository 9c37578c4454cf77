"""Scale-out over ``torch.distributed`` (SPEC §3.3). Collectives run in Python around the custom
ops (a custom op cannot take a ProcessGroup). ``data``: data-parallel token statistics over the
ranks of a group (the ``process_group=`` paths of the token-level ops and losses). ``vocab``,
``vocab_stats``, ``vocab_min_p``, ``vocab_top_p``: vocab parallel row ops (the logits are the local
vocab shard of a tensor-parallel group; ``layout`` places the shards, ``shard`` holds the per-rank
plumbing and the collectives they share)."""
