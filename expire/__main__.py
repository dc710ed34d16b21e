from expire.main import main

main()
