"""agentcred's CSI node plugin: a process of its own on each node (`agentcred csi-node`)."""
