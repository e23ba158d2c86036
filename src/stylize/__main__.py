from stylize.cli import console_main

console_main()
