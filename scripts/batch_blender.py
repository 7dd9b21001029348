"""The batch script now ships in the extension: commands/batch.py (this name is kept for old command lines)."""
import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "commands" / "batch.py"), run_name="__main__")
