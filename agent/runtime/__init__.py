"""The core at run time: persist, queue per channel, answer; the generation scheduler, rate
limits, chat ``!`` commands, background work and recovery after a restart."""
