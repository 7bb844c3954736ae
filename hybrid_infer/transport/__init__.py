"""How Spark tasks reach a pool: Arrow Flight, with no Ray in the task.

protocol.py  what travels: the pool's address (endpoints, token, TLS), a stream's
             header (the job's options, once per stream), errors, pickled payloads
server.py    the Flight service every pool actor (and the pool's manager) runs
client.py    PoolClient: a Spark task's one loop that streams batches through a pool
             (least-loaded, bounded window, order kept, resend, endpoint refresh)

Nothing here imports Ray: a Spark executor whose Python has no Ray uses this package.
"""
