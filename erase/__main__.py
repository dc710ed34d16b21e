from erase.main import main

main()
