module agentcred.dev/probe

go 1.24
