"""Private mechanics shared by every public class (not part of the public API)."""
