"""What vclvirt keeps in Redis: reservation records, their step log, computer ownership,
leases and worker heartbeats. Each concern has its own small type; `keys` names them all."""
