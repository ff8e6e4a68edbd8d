"""A key that belongs to whoever wrote its value (a lease's holder, a lock's run): only
that owner may renew or delete it, checked and done in one script."""

RENEW_IF_OWNED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
DELETE_IF_OWNED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
