"""The node agent (`hami node-agent`): device discovery, registration, and the kubelet device plugin."""
