"""medrecon."""
