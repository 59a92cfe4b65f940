"""Demo services, specialists and knowledge base for `manage.py seed_demo`.

The fictional company is Ledgerly, a cloud accounting and invoicing app for small businesses.
Each entry's `question` holds several phrasings, one per line.
"""

from __future__ import annotations

TECH_SUPPORT_ENTRIES: list[dict] = [
    {
        "question": (
            "How do I reset my password?\n"
            "I forgot my password\n"
            "The password reset email never arrived"
        ),
        "answer": (
            'Click "Forgot password?" on the sign-in page and enter your account email; '
            "we'll send a reset link that is valid for 60 minutes. If it doesn't arrive within "
            "a few minutes, check your spam folder and make sure no-reply@ledgerly.app is "
            "allowed by your mail server."
        ),
    },
    {
        "question": (
            "How do I turn on two-factor authentication?\n"
            "Can I use an authenticator app for 2FA?\n"
            "How do I enable MFA on my account?"
        ),
        "answer": (
            "Go to Settings → Security → Two-factor authentication and scan the QR code with "
            "any authenticator app (Google Authenticator, 1Password, Authy…). Save the ten "
            "recovery codes we show you somewhere safe: they are the only way back in if you "
            "lose your phone."
        ),
    },
    {
        "question": (
            "I lost my phone and can't get my 2FA code\n"
            "How do I use a recovery code?\n"
            "My authenticator codes are not accepted"
        ),
        "answer": (
            'On the code screen choose "Use a recovery code" and enter one of the codes you '
            "saved when you turned on 2FA. If codes are rejected, check that your phone's clock "
            "is set automatically. Without recovery codes, an account owner must verify your "
            "identity with our support team before we can reset 2FA."
        ),
    },
    {
        "question": (
            "I can't log in to my account\n"
            "My account is locked after too many attempts\n"
            "Sign in fails with invalid credentials"
        ),
        "answer": (
            "After five failed attempts we lock sign-in for 15 minutes to protect your account; "
            "wait, then try again or reset your password. If your company uses single sign-on, "
            'sign in with the "Continue with SSO" button instead of a password.'
        ),
    },
    {
        "question": (
            "The mobile app keeps crashing\n"
            "The iPhone app closes as soon as I open it\n"
            "The Android app freezes on startup"
        ),
        "answer": (
            "Please update to the latest version from the App Store or Google Play, then "
            "restart your phone. If it still crashes, go to Settings → Help → Send diagnostics "
            "in the app (or reinstall it): your data is stored in the cloud, so nothing is lost."
        ),
    },
    {
        "question": (
            "Which browsers do you support?\n"
            "Does it work in Firefox, Safari or Internet Explorer?\n"
            "The website looks broken in my browser"
        ),
        "answer": (
            "Ledgerly supports the latest two versions of Chrome, Firefox, Safari and Edge. "
            "Internet Explorer is not supported. If a page looks broken, clear your browser "
            "cache or try a private window to rule out extensions."
        ),
    },
    {
        "question": (
            "How do I export my data?\n"
            "Can I download all my invoices and transactions as CSV or Excel?\n"
            "I want a full backup of my account"
        ),
        "answer": (
            "Go to Settings → Data → Export and choose CSV, Excel or a full ZIP backup that "
            "includes PDFs of your invoices and receipts. Large exports are prepared in the "
            "background and we email you a download link when they are ready."
        ),
    },
    {
        "question": (
            "How do I import data from a spreadsheet?\n"
            "Can I upload a CSV of my customers or bank statement?\n"
            "How do I move my data from QuickBooks or Xero?"
        ),
        "answer": (
            "Use Settings → Data → Import: upload a CSV or Excel file of customers, products or "
            "bank transactions and map its columns to Ledgerly fields. For QuickBooks and Xero "
            "there is a guided migration that brings over contacts, invoices and balances."
        ),
    },
    {
        "question": (
            "My bank feed is not syncing\n"
            "Transactions from my bank account stopped updating\n"
            "How do I reconnect my bank?"
        ),
        "answer": (
            "Banks ask you to renew the connection every 90 days. Open Banking → Connections "
            'and click "Reconnect" next to the account; new transactions usually appear '
            "within an hour. If the bank is listed as degraded there, the delay is on the "
            "bank's side and syncing resumes automatically."
        ),
    },
    {
        "question": (
            "Which integrations do you have?\n"
            "Can I connect Ledgerly to Stripe, Shopify or Slack?\n"
            "Do you work with Zapier?"
        ),
        "answer": (
            "Ledgerly connects to Stripe, PayPal, Shopify, Slack, Google Drive, HubSpot and "
            "5,000+ apps through Zapier. Turn them on in Settings → Integrations; each one "
            "takes a couple of clicks."
        ),
    },
    {
        "question": (
            "How do I create an API key?\n"
            "Where can I find the API documentation?\n"
            "My API token stopped working"
        ),
        "answer": (
            "Account owners and admins can create API keys in Settings → Developers → API keys; "
            "the key is shown only once, so copy it right away. Keys can be revoked there at any "
            "time. The REST API reference is at developers.ledgerly.app."
        ),
    },
    {
        "question": (
            "Is Ledgerly down?\n"
            "The site is not loading, is there an outage?\n"
            "Where is your status page?"
        ),
        "answer": (
            "Live system status and incident updates are at status.ledgerly.app, where you can "
            "also subscribe to notifications. If the status page is green but the app won't "
            "load for you, try another network or browser and tell us what you see."
        ),
    },
    {
        "question": (
            "How do I invite a colleague, my accountant or bookkeeper?\n"
            "How do I add users to my team?\n"
            "Can I give someone read-only access?"
        ),
        "answer": (
            "Go to Settings → Team → Invite, enter their email and pick a role: Admin, "
            "Standard, or Read-only. Accountants can be invited for free and don't use a seat "
            "on your plan."
        ),
    },
    {
        "question": (
            "My customers are not receiving the invoice emails\n"
            "Invoices I send go to the client's spam folder\n"
            "Email notifications are not arriving"
        ),
        "answer": (
            "Check the invoice's activity log to see whether the email was delivered or "
            "bounced. To keep emails out of spam, verify your sending domain in Settings → "
            "Email by adding the two DNS records we show you; you can also copy a shareable "
            "invoice link and send it yourself."
        ),
    },
    {
        "question": (
            "How do I change my email address?\n"
            "How do I update my name or profile details?\n"
            "Can I change the login email on my account?"
        ),
        "answer": (
            "Open your avatar menu → Profile, change the email address and save. We send a "
            "confirmation link to the new address, and the change takes effect once you click "
            "it."
        ),
    },
    {
        "question": (
            "How do I delete my account?\n"
            "I want all my data permanently removed\n"
            "Can you erase my company's data?"
        ),
        "answer": (
            "The account owner can delete the account in Settings → Account → Delete account. "
            "We keep your data for 30 days in case you change your mind, then erase it "
            "permanently; export anything you need first."
        ),
    },
    {
        "question": (
            "How do I upload receipts?\n"
            "Can I snap a photo of a receipt with my phone?\n"
            "How do I attach a receipt to an expense?"
        ),
        "answer": (
            "Take a photo in the mobile app or forward it to your personal receipts@ "
            "address shown in Expenses → Receipts. We read the merchant, date and amount "
            "automatically and suggest a matching bank transaction."
        ),
    },
    {
        "question": (
            "Ledgerly is very slow\nPages take forever to load\nWhy is the dashboard so sluggish?"
        ),
        "answer": (
            "First check status.ledgerly.app for an ongoing incident. Otherwise, very large "
            "reports can take a few seconds on the first load; try narrowing the date range, "
            "and clear your browser cache. If it stays slow, tell us which page and we'll look "
            "into it."
        ),
    },
]

BILLING_ENTRIES: list[dict] = [
    {
        "question": (
            "Where can I find my invoices?\n"
            "How do I download a receipt for my subscription?\n"
            "I need a copy of last month's bill"
        ),
        "answer": (
            "All your Ledgerly subscription invoices are in Settings → Billing → Billing "
            "history, where you can download each one as a PDF. We also email every invoice to "
            "the billing contact on your account."
        ),
    },
    {
        "question": "Can I get a refund?\nI want my money back\nWhat is your refund policy?",
        "answer": (
            "Annual plans can be refunded in full within 30 days of purchase or renewal. "
            "Monthly plans are not refunded, but you can cancel at any time and keep access "
            "until the end of the paid month. Ask here and a member of our billing team will "
            "process an eligible refund."
        ),
    },
    {
        "question": (
            "How do I upgrade or downgrade my plan?\n"
            "Can I change my subscription plan?\n"
            "I want to switch to a cheaper plan"
        ),
        "answer": (
            "Go to Settings → Billing → Change plan and pick the new plan. Upgrades apply "
            "immediately and you pay the prorated difference; downgrades take effect at your "
            "next renewal date."
        ),
    },
    {
        "question": (
            "Which payment methods do you accept?\n"
            "Can I pay by bank transfer or PayPal?\n"
            "Do you take American Express?"
        ),
        "answer": (
            "We accept Visa, Mastercard, American Express, PayPal and SEPA direct debit. "
            "Annual Business and Enterprise plans can also be paid by bank transfer against an "
            "invoice."
        ),
    },
    {
        "question": (
            "How do I update my credit card?\n"
            "My card expired, how do I change the payment details?\n"
            "How do I add a new card to my account?"
        ),
        "answer": (
            'Go to Settings → Billing → Payment method and click "Replace card". The new card '
            "is used for your next payment, and any outstanding invoice is retried right away."
        ),
    },
    {
        "question": (
            "My payment failed\n"
            "Why was my card declined?\n"
            "I got an email saying the payment was unsuccessful"
        ),
        "answer": (
            "Payments usually fail because a card expired or the bank blocked the charge. "
            "Update your card in Settings → Billing, or ask your bank to allow payments to "
            "Ledgerly; we retry automatically three times over seven days before the account "
            "becomes read-only."
        ),
    },
    {
        "question": (
            "How do I add my VAT number to invoices?\n"
            "Do you charge VAT or sales tax?\n"
            "I need the reverse charge on my invoice"
        ),
        "answer": (
            "Add your VAT or tax ID in Settings → Billing → Company details. Businesses in the "
            "EU with a valid VAT number are invoiced with the reverse charge; otherwise we add "
            "the VAT or sales tax that applies where you are."
        ),
    },
    {
        "question": (
            "How do I cancel my subscription?\n"
            "I want to close my account and stop paying\n"
            "How do I end my plan?"
        ),
        "answer": (
            "Go to Settings → Billing → Cancel subscription. You keep full access until the end "
            "of the current billing period, after which your account becomes read-only; your "
            "data stays available for export for 90 days."
        ),
    },
    {
        "question": (
            "I was charged twice\n"
            "There is a charge on my card I don't recognise\n"
            "Why was I billed more than expected?"
        ),
        "answer": (
            "Check Settings → Billing → Billing history: a higher amount is usually a "
            "prorated upgrade or extra seats. A duplicate charge is often a temporary "
            "authorisation that your bank releases within a few days; if it doesn't, tell us "
            "and we'll refund it."
        ),
    },
    {
        "question": (
            "Can I switch from monthly to annual billing?\n"
            "How do I pay yearly instead of monthly?\n"
            "Is there a discount for paying annually?"
        ),
        "answer": (
            'Yes: in Settings → Billing choose "Switch to annual". Annual billing costs the '
            "same as ten months, so you get two months free, and the unused part of your "
            "current month is credited."
        ),
    },
    {
        "question": (
            "How do I change the company name or address on my invoices?\n"
            "Can you reissue an invoice with a different billing address?\n"
            "How do I change the billing contact email?"
        ),
        "answer": (
            "Update your company name, address and billing contact in Settings → Billing → "
            "Company details; new invoices use them automatically. For an invoice that was "
            "already issued, ask here and we'll reissue it."
        ),
    },
    {
        "question": (
            "Can I pay in euros or pounds?\n"
            "Which currencies can I be billed in?\n"
            "Can I change my billing currency?"
        ),
        "answer": (
            "Subscriptions are billed in US dollars, euros or British pounds, chosen from your "
            "country when you sign up. To change the billing currency, ask here before your "
            "next renewal and we'll switch it for you."
        ),
    },
    {
        "question": (
            "When will I be charged?\n"
            "When is my next payment?\n"
            "What day does my subscription renew?"
        ),
        "answer": (
            "You are charged on the same day each month (or year) as the day you first "
            "subscribed. The date and amount of your next payment are shown at the top of "
            "Settings → Billing."
        ),
    },
]

SALES_ENTRIES: list[dict] = [
    {
        "question": (
            "What plans do you offer?\n"
            "How much does Ledgerly cost?\n"
            "Can you compare your pricing plans?"
        ),
        "answer": (
            "Ledgerly has three plans: Starter at $12/month for freelancers, Pro at $29/month "
            "for growing businesses, and Business at $59/month for teams that need approvals "
            "and multiple entities. Enterprise pricing is custom. Pay annually and get two "
            "months free."
        ),
    },
    {
        "question": (
            "What is included in the Pro plan?\n"
            "How much is the Pro plan?\n"
            "Pro plan price and features"
        ),
        "answer": (
            "Pro costs $29/month ($290/year) and includes unlimited invoices, 3 users, "
            "multi-currency, automatic bank feeds, recurring invoices and payroll add-ons. "
            "It's our most popular plan for small businesses with a few employees."
        ),
    },
    {
        "question": (
            "What does the Business plan include?\n"
            "How much is the Business plan?\n"
            "Business plan price and features"
        ),
        "answer": (
            "Business costs $59/month ($590/year) and adds 10 users, approval workflows, "
            "multiple companies under one login, project accounting and priority support on "
            "top of everything in Pro."
        ),
    },
    {
        "question": (
            "What do I get with the Starter plan?\n"
            "How much is the Starter plan?\n"
            "Is there a cheap plan for freelancers?"
        ),
        "answer": (
            "Starter costs $12/month ($120/year) for one user: unlimited invoices and quotes, "
            "expense tracking, one bank feed and basic reports. You can upgrade to Pro at any "
            "time without losing data."
        ),
    },
    {
        "question": (
            "Do you have a free trial?\n"
            "Can I try Ledgerly for free before paying?\n"
            "Is there a free plan?"
        ),
        "answer": (
            "Yes: every plan comes with a 14-day free trial with all Business features and no "
            "credit card required. There is no permanent free plan, but you can export your "
            "data if you decide not to continue."
        ),
    },
    {
        "question": (
            "Do you offer discounts for non-profits or charities?\n"
            "Is there an education discount for students or schools?\n"
            "Do you have special pricing for NGOs?"
        ),
        "answer": (
            "Registered non-profits and charities get 50% off any plan, and students and "
            "teachers can use Ledgerly for free for coursework. Send us proof of status "
            "(charity registration or a school email) and we'll apply the discount."
        ),
    },
    {
        "question": (
            "Do you support single sign-on with Okta or Azure AD?\n"
            "Do you have an Enterprise plan?\n"
            "We are a large company with more than 50 users"
        ),
        "answer": (
            "Our Enterprise plan adds SAML single sign-on (Okta, Azure AD, Google Workspace), "
            "SCIM user provisioning, audit logs, a dedicated account manager and a 99.9% uptime "
            "SLA. Pricing depends on the number of users and entities; tell us about your team "
            "and we'll prepare a quote."
        ),
    },
    {
        "question": (
            "Can I book a demo?\n"
            "I'd like to see a product walkthrough with someone\n"
            "Can I schedule a call with your sales team?"
        ),
        "answer": (
            "Of course! Book a 30-minute live demo at ledgerly.app/demo and pick a time that "
            "suits you; one of our product specialists will tailor it to your business."
        ),
    },
    {
        "question": (
            "Do you help with onboarding and setup?\n"
            "Will someone help us migrate from our old accounting software?\n"
            "Can we switch over from Xero or QuickBooks?\n"
            "Do you offer training for my team?"
        ),
        "answer": (
            "Every new customer gets a guided setup checklist and free webinars. Business and "
            "Enterprise plans include a dedicated onboarding session and free migration from "
            "QuickBooks, Xero or spreadsheets, done by our team within a week."
        ),
    },
    {
        "question": (
            "Where is my data stored?\n"
            "Do you host data in the EU?\n"
            "Which data centres and region do you use?"
        ),
        "answer": (
            "Customer data is hosted in the EU (Frankfurt) or the US (Virginia), chosen when "
            "you create your account. Enterprise customers can also choose UK or Australian "
            "data residency."
        ),
    },
    {
        "question": (
            "Is Ledgerly secure?\n"
            "Are you SOC 2 or ISO 27001 certified?\n"
            "How do you encrypt and protect my financial data?"
        ),
        "answer": (
            "Ledgerly is SOC 2 Type II and ISO 27001 certified. Data is encrypted in transit "
            "(TLS 1.2+) and at rest (AES-256), backed up daily, and tested by independent "
            "penetration testers every year. Our security report is available under NDA."
        ),
    },
    {
        "question": (
            "Are you GDPR compliant?\n"
            "Can we sign a data processing agreement (DPA)?\n"
            "How do you handle personal data and privacy?"
        ),
        "answer": (
            "Yes. Ledgerly is GDPR compliant and acts as a data processor for your customers' "
            "personal data. You can accept our standard DPA in Settings → Legal, and our list "
            "of sub-processors is published at ledgerly.app/privacy."
        ),
    },
    {
        "question": (
            "How many users can I have on each plan?\n"
            "Can I add extra seats for more team members?\n"
            "How much is an additional user?"
        ),
        "answer": (
            "Starter includes 1 user, Pro 3 users and Business 10 users. Extra users cost "
            "$6/month each on any plan, and invited accountants are always free."
        ),
    },
    {
        "question": (
            "Does Ledgerly do payroll?\n"
            "Can I pay my employees through Ledgerly?\n"
            "Do you support payroll and payslips?"
        ),
        "answer": (
            "Payroll is an add-on for Pro and Business in the US, UK and Germany: $4 per "
            "employee per month, with payslips, tax filings and direct deposit included."
        ),
    },
]

PARTNERSHIPS_ENTRIES: list[dict] = [
    {
        "question": (
            "Do you have a partner program for accountants?\n"
            "I'm a bookkeeper with many clients, can I manage them all in Ledgerly?\n"
            "Is there an accounting firm partnership?"
        ),
        "answer": (
            "Yes: the Ledgerly Accountant Partner program is free. Partners get one dashboard "
            "for all their clients, a free practice account, 25% off client subscriptions and "
            "a listing in our partner directory. Apply at ledgerly.app/partners."
        ),
    },
    {
        "question": (
            "Can I resell Ledgerly?\n"
            "Do you have a reseller program?\n"
            "We want to become a distributor in our country"
        ),
        "answer": (
            "We work with resellers in selected regions, who get wholesale pricing, co-branded "
            "material and sales training. Tell us about your company and market and our "
            "partnerships team will get in touch."
        ),
    },
    {
        "question": (
            "Do you have an affiliate program?\n"
            "Can I earn a commission for referring customers?\n"
            "How does the referral program work?"
        ),
        "answer": (
            "Our affiliate program pays a 20% commission on every referred customer's "
            "payments for their first 12 months. Sign up at ledgerly.app/affiliates to get "
            "your tracking link and marketing assets."
        ),
    },
    {
        "question": (
            "How can I list my app in your integration marketplace?\n"
            "We'd like to build an integration with Ledgerly\n"
            "Do you have a technology partner program?"
        ),
        "answer": (
            "Technology partners get a free sandbox, API support from our engineers and a "
            "listing in the Ledgerly app marketplace once their integration passes review. "
            "Apply at ledgerly.app/partners/technology."
        ),
    },
]

SERVICES: list[dict] = [
    {
        "name": "Support",
        "slug": "support",
        "mode": "human_supported",
        "greeting": (
            "Hi! I'm Ledgerly's assistant. Ask me anything about your account, the app or "
            "billing, and I'll do my best to help."
        ),
        "handoff_wait_seconds": 300,
        "specialists": [
            {
                "name": "Tech Support",
                "description": "Sign-in, security, the web and mobile apps, data and integrations.",
                "instructions": (
                    "You are Ledgerly's technical support specialist. Help customers with "
                    "signing in, two-factor authentication, the web and mobile apps, bank "
                    "feeds, imports and exports, integrations and the API. Give clear, "
                    "step-by-step instructions using the menu paths of the app. Never ask for "
                    "passwords or full card numbers. If you are not sure, say so and offer to "
                    "connect the customer with a person."
                ),
                "entries": TECH_SUPPORT_ENTRIES,
            },
            {
                "name": "Billing",
                "description": "Subscriptions, invoices, payments, refunds, tax and cancellation.",
                "instructions": (
                    "You are Ledgerly's billing specialist. Help customers with their "
                    "subscription, plan changes, invoices, payment methods, failed payments, "
                    "VAT and cancellation. Be precise about amounts and dates, never promise a "
                    "refund outside the refund policy, and offer to connect the customer with a "
                    "person for anything that needs a change to their account."
                ),
                "entries": BILLING_ENTRIES,
            },
        ],
    },
    {
        "name": "Sales",
        "slug": "sales",
        "mode": "human_supported",
        "greeting": (
            "Hi! Curious about Ledgerly? Ask me about plans and pricing, security, or book a "
            "demo with our team."
        ),
        "handoff_wait_seconds": 120,
        "specialists": [
            {
                "name": "Sales",
                "description": "Plans, pricing, trials, discounts, Enterprise, security and demos.",
                "instructions": (
                    "You are Ledgerly's sales assistant. Help prospective customers choose a "
                    "plan, explain pricing, trials and discounts, answer security and "
                    "compliance questions, and invite them to book a demo. Be friendly and "
                    "honest: never invent prices or features that are not in the reference "
                    "information."
                ),
                "entries": SALES_ENTRIES,
            },
            {
                "name": "Partnerships",
                "description": "Accountant, reseller, affiliate and technology partner programs.",
                "instructions": (
                    "You are Ledgerly's partnerships manager. Explain the accountant, "
                    "reseller, affiliate and technology partner programs, and ask about the "
                    "partner's business so the partnerships team can follow up."
                ),
                "entries": PARTNERSHIPS_ENTRIES,
            },
        ],
    },
]
