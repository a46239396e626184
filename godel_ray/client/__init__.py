"""What users hold: the proxy and its pieces.

    proxy    connect(), TransparentClusterProxy (sync), ClusterRegistry
    aio      the asyncio twin (``proxy.aio()``)
    policy   what to do after each outcome (reroute, retry, raise): pure, shared by both shells
    session  the handles and location cache a proxy and its twin share
    reader   StateReader: the CLI's light path over the state store, no Ray
"""
