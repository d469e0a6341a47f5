"""Platform adapters (console now; Discord and Matrix next) and the ReplyStream seam."""
